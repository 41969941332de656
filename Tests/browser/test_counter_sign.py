"""The printable counter sign: the store's name and how to ask, with a QR code that decodes (with
zbarimg, from Debian's zbar-tools) to the customer page's link to the store; on paper nothing
else of the page shows; the link opens the store ready to ask.

Run through Tests/browser/run.sh (see test_stamp_flow.py for the helpers).
"""
import base64
import subprocess
import tempfile

from selenium.webdriver.common.by import By

from test_stamp_flow import (  # noqa: F401  (browsers is a fixture)
    ARTIFACTS, BASE, attribute_is, browsers, console_on_failure, console_problems, owner_with_store, screenshot, sign_up, unique,
    visible, visible_css,
)


def decode_qr(driver, element):
    """What a QR code on screen says, read by zbarimg from a screenshot of the element."""
    driver.execute_script("arguments[0].scrollIntoView({ block: 'center' })", element)  # all of it on screen
    png = base64.b64decode(element.screenshot_as_base64)
    (ARTIFACTS / "counter-sign-qr.png").write_bytes(png)
    with tempfile.NamedTemporaryFile(suffix=".png") as file:
        file.write(png)
        file.flush()
        answer = subprocess.run(["zbarimg", "--quiet", "--raw", file.name], capture_output=True, text=True, timeout=30)
    assert answer.returncode == 0, f"zbarimg found no code: {answer.stderr}"
    return answer.stdout.strip()


def test_the_counter_sign_prints_alone_and_its_qr_code_opens_the_store(browsers):
    owner = browsers("owner", 1024, 900)
    customer = browsers("customer", 390, 844, phone=True)
    name = unique("Sign Cafe")
    with console_on_failure({"owner": owner, "customer": customer}):
        store_id = owner_with_store(owner, name)
        visible(owner, "sign-open").click()
        sign = visible_css(owner, '[data-testid="sign"]')
        link = f"{BASE}/app#store={store_id}"
        assert owner.find_element(By.ID, "sign-store").text == name
        assert owner.find_element(By.CSS_SELECTOR, '[data-testid="sign-link"]').text == link
        assert "3 stamps: a free Americano" in sign.text
        qr = visible_css(owner, '[data-testid="sign-qr"] svg.qr')
        assert decode_qr(owner, qr) == link

        # On paper: the sign alone.
        owner.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
        try:
            assert sign.is_displayed()
            for hidden in (".topbar", ".store-head", ".sign-actions", ".strip"):
                assert not owner.find_element(By.CSS_SELECTOR, hidden).is_displayed(), hidden
            screenshot(owner, "counter-sign.png")
        finally:
            owner.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})

        # The link on a phone: sign up, and the store is there to ask.
        customer.get(link)
        sign_up(customer, "Sam", f"{unique('sam')}@example.com")
        result = visible_css(customer, f'[data-testid="store-result"][data-store-id="{store_id}"]')
        assert len(customer.find_elements(By.CSS_SELECTOR, '[data-testid="store-result"]')) == 1
        result.find_element(By.CSS_SELECTOR, '[data-testid="request-stamp"]').click()
        attribute_is(customer, '[data-testid="my-request"]', "data-status", "pending")
        assert console_problems(owner) == [] and console_problems(customer) == []
