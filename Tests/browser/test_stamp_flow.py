"""End-to-end: the owner's page and the customer's page in headless Chromium against a running stampd.

Run through Tests/browser/run.sh, which starts the server and sets STAMPD_BASE_URL.
Waits use WebDriverWait only; screenshots go to artifacts/ (or STAMPD_ARTIFACTS).
"""
import contextlib
import json
import os
import random
import shutil
import urllib.request
import uuid
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

BASE = os.environ.get("STAMPD_BASE_URL", "").rstrip("/")
# The metrics listeners, not the API port: several, comma separated, when instances share the load.
METRICS = [url.rstrip("/") for url in os.environ.get("STAMPD_METRICS_URL", "").split(",") if url]
ARTIFACTS = Path(os.environ.get("STAMPD_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts"))
PASSWORD = "correct horse battery"
LIVE = 2  # seconds: how fast a change must reach the other page

pytestmark = pytest.mark.skipif(not BASE, reason="STAMPD_BASE_URL is not set (use Tests/browser/run.sh)")


# --- browsers ----------------------------------------------------------------------------------

def new_browser(width, height, phone=False, sound_needs_a_tap=False):
    """A headless Chromium; sound plays without a tap unless `sound_needs_a_tap` (the usual rule)."""
    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(argument)
    if not sound_needs_a_tap:
        options.add_argument("--autoplay-policy=no-user-gesture-required")
    if phone:  # headless windows are at least 500 px wide: emulate the phone's screen instead
        options.add_experimental_option("mobileEmulation", {
            "deviceMetrics": {"width": width, "height": height, "pixelRatio": 2, "touch": True}})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = os.environ.get("CHROME_BIN") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chrome:
        options.binary_location = chrome
    service = Service(os.environ.get("CHROMEDRIVER", shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=options)


@pytest.fixture
def browsers():
    """Opens browsers on demand (each is its own profile: its own localStorage); prints their
    console logs if the test fails, and closes them."""
    opened = {}

    def open_browser(name, width=1280, height=900, phone=False):
        opened[name] = new_browser(width, height, phone)
        return opened[name]

    yield open_browser
    for driver in opened.values():
        with contextlib.suppress(Exception):
            driver.quit()


@contextlib.contextmanager
def console_on_failure(drivers):
    """On failure, prints each browser's console log (goog:loggingPrefs browser ALL) and saves a
    screenshot of each, then re-raises."""
    try:
        yield
    except BaseException:
        for name, driver in drivers.items():
            print(f"\n===== console of the {name} browser ({driver.current_url}) =====")
            with contextlib.suppress(Exception):
                for entry in driver.get_log("browser"):
                    print(f"{entry['level']:8} {entry['message']}")
            with contextlib.suppress(Exception):
                driver.save_screenshot(str(ARTIFACTS / f"failure-{name}.png"))
        raise


def console_problems(driver, expected_statuses=()):
    """Console errors, e.g. a Content-Security-Policy violation or an uncaught exception. Chromium
    also logs every HTTP error answer: those with a status the test provoked on purpose are left out."""
    expected = tuple(f"the server responded with a status of {status} " for status in expected_statuses)
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and not any(text in e["message"] for text in expected)]


def wait(driver, timeout=10):
    # A page that reloads (signing out does) can make the driver's probe fail once with "cannot find
    # context": that is not an answer, so the wait asks again until its time is up.
    return WebDriverWait(driver, timeout, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException, WebDriverException))


def visible(driver, element_id, timeout=10):
    return wait(driver, timeout).until(EC.visibility_of_element_located((By.ID, element_id)))


def visible_css(driver, css, timeout=10):
    return wait(driver, timeout).until(EC.visibility_of_element_located((By.CSS_SELECTOR, css)))


def click_css(driver, css, timeout=10):
    """Clicks the visible element at `css`, finding it again if the page re-rendered it between
    the find and the click (a list redrawn by an event that just arrived)."""
    def clicked(d):
        found = [e for e in d.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]
        if not found:
            return False
        found[0].click()
        return True
    return wait(driver, timeout).until(clicked, f"click {css}")


def fill(driver, element_id, text):
    field = visible(driver, element_id)
    field.clear()
    field.send_keys(text)


def attribute_is(driver, css, name, value, timeout=10):
    """Waits until the element at `css` exists and has attribute `name` equal to `value`."""
    def check(d):
        found = d.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found and found[0].get_attribute(name) == value else False
    return wait(driver, timeout).until(check, f"{css} [{name}={value!r}]")


def settle(driver, line):
    """Waits until a queue line has stood still for the half second the queue needs (a line that
    just moved ignores taps)."""
    wait(driver).until(lambda d: d.execute_script(
        "return performance.now() - Number(arguments[0].dataset.movedAt || 0) > 550", line))


def decide(driver, line, action):
    """Approves or rejects a queue line as a person would: once it stands still, one click."""
    settle(driver, line)
    line.find_element(By.CSS_SELECTOR, f'[data-testid="{action}"]').click()


def reject(driver, line, reason=None):
    """Rejects a queue line: Reject, then (in the line's place) a reason or none, then Reject again
    once the half second that tells a confirmation from a double tap has passed."""
    decide(driver, line, "reject")
    choice = line.find_element(By.CSS_SELECTOR, '[data-testid="reject-reason"]')
    if reason:
        Select(choice).select_by_visible_text(reason)
    confirm = line.find_element(By.CSS_SELECTOR, '[data-testid="reject-confirm"]')
    wait(driver).until(lambda d: d.execute_script(
        "return performance.now() > Number(arguments[0].dataset.confirmFrom)", confirm))
    confirm.click()


def sign_up(driver, name, login):
    fill(driver, "signup-name", name)
    fill(driver, "signup-login", login)
    fill(driver, "signup-password", PASSWORD)
    driver.find_element(By.ID, "signup-submit").click()


def screenshot(driver, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # The whole page, not only the window.
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    import base64
    (ARTIFACTS / name).write_bytes(base64.b64decode(shot["data"]))


def screenshot_at_size(driver, name, width, height, mobile=False):
    """A screenshot as a screen of another size would show the page (a phone's, or a desktop's)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 2 if mobile else 1, "mobile": mobile})
    try:
        screenshot(driver, name)
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


# --- the API, for the parts of a test that are not the page under test --------------------------

def call(method, path, body=None, token=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, method=method, headers=headers or {})
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
        return json.loads(text) if text and response.headers.get_content_type().endswith("json") else text


def owner_token(driver):
    """The owner page's session token, for the parts of a test made through the API."""
    return driver.execute_script("return JSON.parse(localStorage.getItem('stampd.owner.token'))")


def api_customer(name, login=None):
    """A customer account made through the API: {token, account}."""
    return call("POST", "/v1/accounts", {"role": "customer", "login": login or f"{unique('c')}@example.com",
                                         "password": PASSWORD, "name": name})


def api_ask(store_id, who, body):
    """A request of `who` at the store, made through the API with an Idempotency-Key."""
    return call("POST", f"/v1/stores/{store_id}/requests", body, token=who["token"],
                headers={"Idempotency-Key": str(uuid.uuid4())})


def parked_polls():
    """Polls parked on the server (on every instance, when several share the load)."""
    total = 0.0
    for metrics in METRICS:
        with urllib.request.urlopen(metrics + "/metrics", timeout=10) as response:
            text = response.read().decode()
        gauge = [line for line in text.splitlines() if line.startswith("stampd_parked_polls ")]
        if not gauge:
            raise AssertionError(f"no stampd_parked_polls in {metrics}/metrics")
        total += float(gauge[0].split()[1])
    return total


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def owner_with_store(owner, store_name):
    """Signs up an owner and creates a store, through the owner page; answers the store id."""
    owner.get(BASE + "/")
    sign_up(owner, "Olive Owner", f"{unique('owner')}@example.com")
    fill(owner, "store-name", store_name)
    fill(owner, "store-reward", "Americano")
    fill(owner, "store-stamps", "3")
    owner.find_element(By.ID, "store-create-submit").click()
    wait(owner).until(EC.text_to_be_present_in_element((By.ID, "store-title"), store_name))
    attribute_is(owner, "#connection", "data-state", "live")
    return visible(owner, "store-id").text


# --- the scenario --------------------------------------------------------------------------------

def test_customer_asks_owner_approves(browsers):
    owner = browsers("owner", 1280, 900)
    customer = browsers("customer", 390, 844, phone=True)
    store_name = unique("Test Cafe")
    with console_on_failure({"owner": owner, "customer": customer}):
        # The owner signs up and creates the store on the owner page.
        store_id = owner_with_store(owner, store_name)
        assert store_id.startswith("sto_")
        assert visible(owner, "pending-empty").text == "No requests waiting."

        # The customer signs up on the customer page and finds the store by its name.
        customer.get(BASE + "/app")
        sign_up(customer, "Casey Customer", f"{unique('customer')}@example.com")
        visible(customer, "customer")
        attribute_is(customer, "#connection", "data-state", "live")
        fill(customer, "search-q", store_name)
        customer.find_element(By.ID, "search-submit").click()
        attribute_is(customer, "#search-results", "data-query", store_name)  # the answer to this search
        result = wait(customer).until(EC.visibility_of_element_located(
            (By.CSS_SELECTOR, f'[data-testid="store-result"][data-store-id="{store_id}"]')))
        Select(result.find_element(By.CSS_SELECTOR, '[data-testid="stamp-count"]')).select_by_value("2")
        result.find_element(By.CSS_SELECTOR, '[data-testid="request-stamp"]').click()
        mine = attribute_is(customer, '[data-testid="my-request"]', "data-status", "pending")
        request_id = mine.get_attribute("data-request-id")
        assert "Pending" in mine.text

        # The owner page shows it within 2 s, without a reload.
        item = wait(owner, LIVE).until(EC.visibility_of_element_located(
            (By.CSS_SELECTOR, f'#pending-list [data-testid="request-item"][data-request-id="{request_id}"]')))
        group = item.find_element(By.XPATH, "ancestor::li[@data-testid='request-group']")
        assert "Casey Customer" in group.text and "2 stamps" in item.text
        assert "New request" in visible(owner, "notice").text
        assert owner.title.startswith("(1) ")

        # The owner approves; the customer page shows the stamps within 2 s.
        decide(owner, item, "approve")
        card = attribute_is(customer, f'#cards [data-testid="card"][data-store-id="{store_id}"]', "data-stamps", "2",
                            timeout=LIVE)
        assert "2 of 3 stamps" in card.text
        attribute_is(customer, f'[data-testid="my-request"][data-request-id="{request_id}"]', "data-status", "approved",
                     timeout=LIVE)

        # The owner's page: nothing pending, today's totals count the approval.
        wait(owner).until(EC.invisibility_of_element_located(
            (By.CSS_SELECTOR, f'#pending-list [data-testid="request-item"][data-request-id="{request_id}"]')))
        wait(owner).until(EC.text_to_be_present_in_element((By.ID, "totals-approved"), "1"))
        assert owner.find_element(By.ID, "totals-stamps").text == "2"
        assert not owner.find_element(By.ID, "notice").is_displayed()
        # Nothing on the phone is wider than its screen.
        assert customer.execute_script(
            "return document.documentElement.scrollWidth <= document.documentElement.clientWidth")

        # The card's history shows the stamps.
        card.find_element(By.CSS_SELECTOR, '[data-testid="show-ledger"]').click()
        wait(customer).until(EC.text_to_be_present_in_element((By.ID, "ledger-rows"), "Stamps added"))

        screenshot(owner, "owner.png")
        screenshot(customer, "customer.png")

        # A reload keeps the owner signed in, on the same store, with the same totals.
        owner.refresh()
        wait(owner).until(EC.text_to_be_present_in_element((By.ID, "store-title"), store_name))
        wait(owner).until(EC.text_to_be_present_in_element((By.ID, "totals-approved"), "1"))

        assert console_problems(owner) == []
        assert console_problems(customer) == []

        # Signing out shows the sign-in form again, and stays signed out after a reload.
        customer.find_element(By.ID, "signout").click()
        visible(customer, "signin-form")
        customer.refresh()
        visible(customer, "signin-form")
        assert not customer.find_element(By.ID, "customer").is_displayed()


def test_one_poll_per_browser(browsers):
    """Two owner tabs share one long poll: the leader tab polls, the other gets the events over a
    BroadcastChannel; when the leader's tab closes, the other takes over."""
    owner = browsers("owner")
    with console_on_failure({"owner": owner}):
        store_id = owner_with_store(owner, unique("Two Tabs Cafe"))
        leader = owner.current_window_handle
        owner.switch_to.new_window("tab")
        owner.get(BASE + "/")
        follower = owner.current_window_handle
        wait(owner).until(EC.text_to_be_present_in_element((By.ID, "connection"), "another tab"))
        wait(owner).until(lambda _: parked_polls() == 1, "one parked poll for the two tabs")

        # A customer (through the API) asks; the follower tab shows it.
        customer = call("POST", "/v1/accounts", {"role": "customer", "login": f"{unique('c')}@example.com",
                                                 "password": PASSWORD, "name": "Tab Tester"})
        first = call("POST", f"/v1/stores/{store_id}/requests", {"kind": "stamp", "count": 1},
                     token=customer["token"], headers={"Idempotency-Key": str(uuid.uuid4())})
        wait(owner, LIVE).until(EC.visibility_of_element_located((By.CSS_SELECTOR, f'[data-request-id="{first["id"]}"]')))

        # The leader tab closes: the follower takes over the poll.
        owner.switch_to.window(leader)
        owner.close()
        owner.switch_to.window(follower)
        attribute_is(owner, "#connection", "data-state", "live")
        wait(owner).until(lambda d: "another tab" not in d.find_element(By.ID, "connection").text)
        second = call("POST", f"/v1/stores/{store_id}/requests", {"kind": "stamp", "count": 3},
                      token=customer["token"], headers={"Idempotency-Key": str(uuid.uuid4())})
        item = wait(owner, LIVE).until(EC.visibility_of_element_located(
            (By.CSS_SELECTOR, f'[data-request-id="{second["id"]}"]')))
        assert "3 stamps" in item.text
        assert len(owner.find_elements(By.CSS_SELECTOR, '#pending-list [data-testid="request-item"]')) == 2
        assert console_problems(owner) == []


def owner_stamps(owner, item_css, count):
    """Stamps the customer listed at `item_css` on the owner page."""
    field = owner.find_element(By.CSS_SELECTOR, f'{item_css} [data-testid="owner-stamp-count"]')
    field.clear()
    field.send_keys(str(count))
    owner.find_element(By.CSS_SELECTOR, f'{item_css} [data-testid="owner-stamp"]').click()


def test_walk_in_claim_and_gift(browsers):
    """The owner registers a walk-in customer by phone (the store holds a card for that number) and
    stamps it; the customer signs up with that phone, types the claim code, sees the stamps (and a
    live one more, once the owner finds them again), and gives one stamp to another customer, whose
    page shows it at once."""
    owner = browsers("owner", 1280, 1000)
    customer = browsers("customer", 390, 844, phone=True)
    drivers = {"owner": owner, "customer": customer}
    phone = f"+1 555 {random.randrange(10**6, 10**7)}"
    with console_on_failure(drivers):
        store_id = owner_with_store(owner, unique("Walk-in Cafe"))

        # The owner registers the walk-in: the claim code shows, and the customer is listed.
        fill(owner, "walkin-phone", phone)
        fill(owner, "walkin-name", "Wally")
        owner.find_element(By.ID, "walkin-submit").click()
        code = wait(owner).until(lambda d: d.find_element(By.ID, "claim-code").text.strip()
                                 if d.find_element(By.ID, "claim").is_displayed() else False)
        assert code.isdigit() and len(code) == 6
        assert phone in owner.find_element(By.ID, "claim-for").text
        listed = visible(owner, "customer-list").find_element(By.CSS_SELECTOR, '[data-testid="customer-item"]')
        customer_id = listed.get_attribute("data-customer-id")
        assert listed.get_attribute("data-walk-in") == "true" and "Walk-in" in listed.text

        # The same phone again is refused, with the reason under the phone field; the card the
        # store already holds is listed, to stamp it.
        fill(owner, "walkin-phone", phone.replace(" ", "-"))
        owner.find_element(By.ID, "walkin-submit").click()
        wait(owner).until(EC.text_to_be_present_in_element(
            (By.ID, "walkin-phone-error"), "already holds a card for this phone number"))
        assert owner.find_element(By.ID, "walkin-phone").get_attribute("aria-invalid") == "true"
        item_css = f'#customer-list [data-customer-id="{customer_id}"]'
        visible_css(owner, item_css)

        # The owner stamps the held card once; the list shows the card.
        owner_stamps(owner, item_css, 1)
        attribute_is(owner, item_css, "data-stamps", "1")

        # Found again by the last four digits of the phone.
        fill(owner, "find-q", phone[-4:])
        owner.find_element(By.ID, "find-submit").click()
        attribute_is(owner, item_css, "data-stamps", "")  # a fresh search result: the card is not known
        screenshot(owner, "owner-walk-in.png")

        # The customer signs up with that phone: no code needed for that.
        customer.get(BASE + "/app")
        sign_up(customer, "Wally Walker", phone.replace(" ", ""))
        visible(customer, "customer")
        attribute_is(customer, "#connection", "data-state", "live")
        assert visible(customer, "cards-empty").is_displayed()

        # A wrong claim code is refused under the field; the right one brings the held card's stamp.
        wrong = "000000" if code != "000000" else "111111"
        fill(customer, "claim-input", wrong)
        customer.find_element(By.ID, "claim-submit").click()
        attribute_is(customer, "#claim-input", "aria-invalid", "true")
        assert "code" in visible(customer, "claim-input-error").text
        screenshot(customer, "customer-claim-error.png")
        fill(customer, "claim-input", code)
        customer.find_element(By.ID, "claim-submit").click()
        card_css = f'#cards [data-testid="card"][data-store-id="{store_id}"]'
        attribute_is(customer, card_css, "data-stamps", "1")
        done = visible(customer, "claim-done").text
        assert "Walk-in Cafe" in done and "1 of 3 stamps" in done
        assert customer.find_element(By.ID, "claim-input").get_attribute("aria-invalid") is None
        assert customer.execute_script(
            "return document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        screenshot(customer, "customer-claim.png")

        # The owner's row was the held card, which is gone now: stamping it says so on the row.
        owner_stamps(owner, item_css, 1)
        wait(owner).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, f"{item_css} .item-status"), "claimed"))
        # Found again by phone, it is the customer's own card; another stamp reaches them live, with a notice.
        owner.find_element(By.ID, "find-submit").click()
        found = wait(owner).until(lambda d: d.find_element(By.CSS_SELECTOR, '#customer-list [data-walk-in="false"]'))
        app_css = f'#customer-list [data-customer-id="{found.get_attribute("data-customer-id")}"]'
        assert "Uses the app" in found.text
        owner_stamps(owner, app_css, 1)
        card = attribute_is(customer, card_css, "data-stamps", "2", timeout=LIVE)
        wait(customer).until(EC.text_to_be_present_in_element(
            (By.CSS_SELECTOR, f'{card_css} [data-testid="card-note"]'), "added 1 stamp"))

        # The receiver (made through the API) signs in on the customer page, in the owner's browser.
        receiver_login = f"{unique('gia')}@example.com"
        call("POST", "/v1/accounts", {"role": "customer", "login": receiver_login, "password": PASSWORD, "name": "Gia"})
        owner_tab = owner.current_window_handle
        owner.switch_to.new_window("tab")
        receiver = owner
        receiver.get(BASE + "/app")
        fill(receiver, "signin-login", receiver_login)
        fill(receiver, "signin-password", PASSWORD)
        receiver.find_element(By.ID, "signin-submit").click()
        visible(receiver, "customer")
        attribute_is(receiver, "#connection", "data-state", "live")

        # The customer gives one stamp: first to themself (refused, under the field), then to Gia.
        card.find_element(By.CSS_SELECTOR, '[data-testid="give-stamps"]').click()
        to = wait(customer).until(EC.visibility_of(card.find_element(By.CSS_SELECTOR, '[data-testid="gift-to"]')))
        to.send_keys(phone)
        # A gift is said in a sentence first, and sent on the second tap.
        card.find_element(By.CSS_SELECTOR, '[data-testid="gift-submit"]').click()
        confirm = card.find_element(By.CSS_SELECTOR, '[data-testid="gift-confirm"]')
        assert confirm.text == f"Give 1 stamp to {phone}? This cannot be undone."
        card.find_element(By.CSS_SELECTOR, '[data-testid="gift-submit"]').click()
        wait(customer).until(lambda _: to.get_attribute("aria-invalid") == "true")
        assert "someone else" in card.text
        screenshot(customer, "customer-gift.png")
        to.clear()
        to.send_keys(receiver_login)
        card.find_element(By.CSS_SELECTOR, '[data-testid="gift-submit"]').click()
        assert receiver_login in confirm.text and customer.find_element(By.CSS_SELECTOR, card_css).get_attribute("data-stamps") == "2"
        card.find_element(By.CSS_SELECTOR, '[data-testid="gift-submit"]').click()
        attribute_is(customer, card_css, "data-stamps", "1")
        wait(customer).until(EC.text_to_be_present_in_element((By.ID, "message"), "You gave Gia 1 stamp"))
        assert not card.find_element(By.CSS_SELECTOR, '[data-testid="gift-form"]').is_displayed()
        assert customer.execute_script(
            "return document.documentElement.scrollWidth <= document.documentElement.clientWidth")

        # Gia's page shows the stamp and who gave it, live.
        attribute_is(receiver, card_css, "data-stamps", "1", timeout=LIVE)
        wait(receiver).until(EC.text_to_be_present_in_element((By.ID, "message"), "Wally Walker gave you 1 stamp"))
        screenshot(receiver, "receiver.png")
        screenshot(customer, "customer-after-gift.png")

        assert console_problems(customer, expected_statuses=(422, 400)) == []  # the wrong claim code; the self-gift
        receiver.close()
        owner.switch_to.window(owner_tab)
        # The owner's browser, with Gia's tab: the 409 of the phone registered twice, the 404 of the claimed card.
        assert console_problems(owner, expected_statuses=(409, 404)) == []


def test_member_code(browsers):
    """A customer with the app shows their member code; the owner, who cannot find them (they have no
    card here yet), types it in, and stamps them: the customer's new card shows it live."""
    owner = browsers("owner", 1280, 1000)
    customer = browsers("customer", 390, 844, phone=True)
    with console_on_failure({"owner": owner, "customer": customer}):
        store_id = owner_with_store(owner, unique("Member Cafe"))
        customer.get(BASE + "/app")
        login = f"{unique('mia')}@example.com"
        sign_up(customer, "Mia Member", login)
        visible(customer, "customer")
        attribute_is(customer, "#connection", "data-state", "live")

        # The customer shows the member code: 8 digits, large, with when it expires.
        customer.find_element(By.ID, "member-show").click()
        shown = wait(customer).until(lambda d: d.find_element(By.ID, "member-code").text.strip()
                                     if d.find_element(By.ID, "member-box").is_displayed() else False)
        member_code = shown.replace(" ", "")
        assert member_code.isdigit() and len(member_code) == 8
        assert "Valid until" in customer.find_element(By.ID, "member-expiry").text
        assert customer.execute_script(
            "return document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        screenshot(customer, "customer-member-code.png")

        # The owner looks for them: nobody with a card here, and the page says how to add them.
        fill(owner, "find-q", "Mia")
        owner.find_element(By.ID, "find-submit").click()
        empty = visible(owner, "customers-empty")
        assert "Nobody with a card here" in empty.text and "member code" in empty.text
        owner.find_element(By.ID, "empty-member").click()
        assert owner.switch_to.active_element == owner.find_element(By.ID, "member-code")
        screenshot(owner, "owner-not-found.png")

        # A wrong member code is refused under the field; the right one (as shown, with its space) lists them.
        wrong = "00000000" if member_code != "00000000" else "11111111"
        fill(owner, "member-code", wrong)
        owner.find_element(By.ID, "member-submit").click()
        attribute_is(owner, "#member-code", "aria-invalid", "true")
        assert visible(owner, "member-code-error").text
        fill(owner, "member-code", shown)
        owner.find_element(By.ID, "member-submit").click()
        listed = wait(owner).until(EC.visibility_of_element_located(
            (By.CSS_SELECTOR, '#customer-list [data-testid="customer-item"]')))
        assert listed.get_attribute("data-walk-in") == "false"
        assert "Mia Member" in listed.text and login in listed.text and "Uses the app" in listed.text
        assert owner.find_element(By.ID, "member-code").get_attribute("aria-invalid") is None
        assert not owner.find_element(By.ID, "customers-empty").is_displayed()
        screenshot(owner, "owner-member-code.png")

        # The owner stamps them twice over: the customer's new card shows it live.
        item_css = f'#customer-list [data-customer-id="{listed.get_attribute("data-customer-id")}"]'
        owner_stamps(owner, item_css, 2)
        attribute_is(owner, item_css, "data-stamps", "2")
        card_css = f'#cards [data-testid="card"][data-store-id="{store_id}"]'
        attribute_is(customer, card_css, "data-stamps", "2", timeout=LIVE)
        wait(customer).until(EC.text_to_be_present_in_element(
            (By.CSS_SELECTOR, f'{card_css} [data-testid="card-note"]'), "added 2 stamps"))

        # And now the owner finds them by name.
        fill(owner, "find-q", "mia mem")
        owner.find_element(By.ID, "find-submit").click()
        visible_css(owner, item_css)

        # The same forms on the other size of screen (this drops the phone emulation: keep it last).
        screenshot_at_size(owner, "owner-member-code-phone.png", 390, 844, mobile=True)
        screenshot_at_size(customer, "customer-member-code-desktop.png", 1280, 900)

        assert console_problems(customer) == []
        assert console_problems(owner, expected_statuses=(422,)) == []  # the wrong member code


def test_failed_approval_keeps_the_row(browsers):
    """An approval the server refuses while the request is still pending (a second reward, when the
    card has only one) gives the row its buttons back, with the reason on the row; the owner can then
    reject it."""
    owner = browsers("owner", 1280, 900)
    with console_on_failure({"owner": owner}):
        store_id = owner_with_store(owner, unique("Reward Cafe"))
        customer = call("POST", "/v1/accounts", {"role": "customer", "login": f"{unique('r')}@example.com",
                                                 "password": PASSWORD, "name": "Rita Reward"})

        def ask(body):
            return call("POST", f"/v1/stores/{store_id}/requests", body, token=customer["token"],
                        headers={"Idempotency-Key": str(uuid.uuid4())})

        def row(request):
            return f'#pending-list [data-testid="request-item"][data-request-id="{request["id"]}"]'

        # Three stamps make one reward (the store asks for 3).
        stamps = ask({"kind": "stamp", "count": 3})
        decide(owner, visible_css(owner, row(stamps), LIVE), "approve")
        wait(owner).until(EC.invisibility_of_element_located((By.CSS_SELECTOR, row(stamps))))

        # Two rewards asked for: the first is approved, the second cannot be.
        first, second = ask({"kind": "reward"}), ask({"kind": "reward"})
        visible_css(owner, row(second), LIVE)
        decide(owner, visible_css(owner, row(first)), "approve")
        wait(owner).until(EC.invisibility_of_element_located((By.CSS_SELECTOR, row(first))))
        item = visible_css(owner, row(second))
        decide(owner, item, "approve")
        status = wait(owner).until(EC.visibility_of_element_located(
            (By.CSS_SELECTOR, f'{row(second)} [data-testid="request-status"]')))
        wait(owner).until(EC.text_to_be_present_in_element(
            (By.CSS_SELECTOR, f'{row(second)} [data-testid="request-status"]'), "no reward"))
        assert "Not approved" in status.text
        # The reason is on screen, next to the row, and the buttons work again.
        assert owner.execute_script(
            "const r = arguments[0].getBoundingClientRect(); return r.top >= 0 && r.bottom <= innerHeight", status)
        for button in item.find_elements(By.CSS_SELECTOR, "button"):
            assert button.get_attribute("aria-disabled") is None
        assert "busy" not in item.get_attribute("class")
        screenshot(owner, "owner-failed-approval.png")

        # Reject asks why in the line's place, and Keep goes back without deciding: the line's height
        # at the tap is its height while asking (measured in the same script as the tap, since a
        # line may still change while the test waits for it to stand still).
        settle(owner, item)
        height = owner.execute_script(
            "const line = arguments[0], h = line.getBoundingClientRect().height;"
            "line.querySelector('[data-testid=\"reject\"]').click(); return h", item)
        assert item.find_element(By.CSS_SELECTOR, '[data-testid="reject-reason"]').is_displayed()
        asking = owner.execute_script("return arguments[0].getBoundingClientRect().height", item)
        assert abs(asking - height) < 0.5, f"{height} px before, {asking} px asking: {item.get_attribute('outerHTML')}"  # nothing below it moves
        item.find_element(By.CSS_SELECTOR, '[data-testid="reject-cancel"]').click()
        assert item.find_element(By.CSS_SELECTOR, '[data-testid="reject"]').is_displayed()
        reject(owner, item, "Please ask at the counter")
        wait(owner).until(EC.invisibility_of_element_located((By.CSS_SELECTOR, row(second))))
        attribute_is(owner, f'#decided-list [data-request-id="{second["id"]}"]', "data-status", "rejected")
        assert "Please ask at the counter" in owner.find_element(
            By.CSS_SELECTOR, f'#decided-list [data-request-id="{second["id"]}"]').text
        assert call("GET", f"/v1/requests/{second['id']}", token=customer["token"])["reason"] == "Please ask at the counter"
        assert console_problems(owner, expected_statuses=(409,)) == []


def test_a_barista_on_a_second_browser_decides_and_the_owner_sees_who(browsers):
    """The owner invites a barista from the store's page; the barista signs up on another browser,
    joins with the code (no store id typed), and both screens show a request at once; the barista
    approves it, it leaves the owner's queue at once, and the owner's page says who approved it.
    Removed, the barista is signed out at once."""
    owner = browsers("owner", 1280, 900)
    barista = browsers("barista", 1024, 768)
    store_name = unique("Team Cafe")
    with console_on_failure({"owner": owner, "barista": barista}):
        store_id = owner_with_store(owner, store_name)
        click_css(owner, '[data-testid="view-settings"]')  # the staff are in the owner's settings
        visible(owner, "invite-submit").click()
        code = visible(owner, "invitation-code").text
        assert len(code) == 11 and code[5] == "-"

        barista.get(BASE + "/")
        sign_up(barista, "Ben Barista", f"{unique('ben')}@example.com")
        fill(barista, "join-code", code)
        barista.find_element(By.ID, "join-submit").click()
        wait(barista).until(EC.text_to_be_present_in_element((By.ID, "store-title"), store_name))
        assert visible(barista, "store-role").text == "Staff"
        assert not barista.find_element(By.ID, "staff-panel").is_displayed()
        assert not barista.find_element(By.CSS_SELECTOR, '[data-testid="view-settings"]').is_displayed()
        assert barista.find_element(By.CSS_SELECTOR, '[data-testid="view-history"]').is_displayed()  # the records are for staff too
        attribute_is(barista, "#connection", "data-state", "live")
        # The owner's staff list hears of the new member.
        wait(owner, LIVE).until(EC.text_to_be_present_in_element((By.ID, "staff-list"), "Ben Barista"))
        owner.find_element(By.CSS_SELECTOR, '.view-tab[data-view="counter"]').click()

        # A new device of the barista's picks the store from the list.
        barista.find_element(By.ID, "switch-store").click()
        choice = visible_css(barista, f'[data-testid="store-choice"][data-store-id="{store_id}"]')
        assert store_name in choice.text and "Staff" in choice.text
        choice.click()
        wait(barista).until(EC.text_to_be_present_in_element((By.ID, "store-title"), store_name))

        customer = call("POST", "/v1/accounts", {"role": "customer", "login": f"{unique('c')}@example.com",
                                                 "password": PASSWORD, "name": "Dana Customer"})
        # The customer reads the counter code off the barista's screen and sends it with the request.
        code_on_screen = visible(barista, "counter-code").text.replace(" ", "")
        assert len(code_on_screen) == 6 and code_on_screen.isdigit()
        asked = call("POST", f"/v1/stores/{store_id}/requests", {"kind": "stamp", "count": 2, "counterCode": code_on_screen},
                     token=customer["token"])
        assert asked["atCounter"] is True
        css = f'#pending-list [data-testid="request-item"][data-request-id="{asked["id"]}"]'
        visible_css(owner, css, LIVE)
        on_barista = visible_css(barista, css, LIVE)
        assert on_barista.find_element(By.CSS_SELECTOR, '[data-testid="at-counter"]').text == "At the counter"
        screenshot(barista, "barista-at-counter.png")
        decide(barista, on_barista, "approve")
        wait(owner, LIVE).until(EC.invisibility_of_element_located((By.CSS_SELECTOR, css)))
        decided = visible_css(owner, f'#decided-list [data-request-id="{asked["id"]}"]', LIVE)
        assert "by Ben Barista" in decided.text
        wait(owner).until(EC.text_to_be_present_in_element((By.ID, "totals-stamps"), "2"))
        screenshot(owner, "owner-team.png")
        screenshot(barista, "barista.png")
        assert console_problems(owner) == []
        assert console_problems(barista) == []

        # The owner undoes the approval (a correcting entry on the server): both pages say so.
        decided.find_element(By.CSS_SELECTOR, '[data-testid="undo"]').click()
        undone = f'#decided-list [data-request-id="{asked["id"]}"] [data-testid="undone-by"]'
        assert "undone by Olive Owner" in visible_css(owner, undone).text
        assert "undone by Olive Owner" in visible_css(barista, undone, LIVE).text
        wait(owner).until(EC.text_to_be_present_in_element((By.ID, "totals-stamps"), "0"))
        card = call("GET", "/v1/cards", token=customer["token"])["cards"][0]
        assert card["stamps"] == 0

        # The owner removes the barista: their page is signed out at once.
        owner.find_element(By.CSS_SELECTOR, '[data-testid="view-settings"]').click()
        member = visible_css(owner, '[data-testid="member"][data-role="staff"]')
        member.find_element(By.CSS_SELECTOR, '[data-testid="remove-member"]').click()
        wait(owner).until(EC.alert_is_present()).accept()
        visible(barista, "signin-form", LIVE)
        assert "session has ended" in barista.find_element(By.ID, "auth-error").text
        wait(owner).until(lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-testid="member"][data-role="staff"]'))


def test_an_expired_request_is_announced(browsers):
    """A request nobody decided in time leaves the queue with a notice, not silently."""
    owner = browsers("owner", 1280, 900)
    with console_on_failure({"owner": owner}):
        store_id = owner_with_store(owner, unique("Slow Cafe"))
        token = owner.execute_script("return JSON.parse(localStorage.getItem('stampd.owner.token'))")
        # The shortest lifetime a store may set, so that the test waits seconds, not minutes.
        call("PATCH", f"/v1/stores/{store_id}", {"requestTtlSeconds": 10}, token=token)
        customer = call("POST", "/v1/accounts", {"role": "customer", "login": f"{unique('e')}@example.com",
                                                 "password": PASSWORD, "name": "Eli Early"})
        asked = call("POST", f"/v1/stores/{store_id}/requests", {"kind": "stamp"}, token=customer["token"])
        row = f'#pending-list [data-testid="request-item"][data-request-id="{asked["id"]}"]'
        visible_css(owner, row, LIVE)
        wait(owner, 15).until(EC.invisibility_of_element_located((By.CSS_SELECTOR, row)))
        wait(owner, LIVE).until(EC.text_to_be_present_in_element((By.ID, "notice"), "Expired: Eli Early"))
        attribute_is(owner, f'#decided-list [data-request-id="{asked["id"]}"]', "data-status", "expired")
        assert console_problems(owner) == []


def test_a_customer_types_the_counter_code_into_the_request(browsers):
    """The customer reads the code off the store's page and sends it with the stamp request; the
    store's row says the request was made at the counter. A wrong code is refused, by name."""
    owner = browsers("owner", 1280, 900)
    customer = browsers("customer", 390, 844, phone=True)
    store_name = unique("Counter Cafe")
    with console_on_failure({"owner": owner, "customer": customer}):
        store_id = owner_with_store(owner, store_name)
        customer.get(BASE + "/app")
        sign_up(customer, "Cora Counter", f"{unique('cora')}@example.com")
        attribute_is(customer, "#connection", "data-state", "live")
        fill(customer, "search-q", store_name)
        customer.find_element(By.ID, "search-submit").click()
        result_css = f'[data-testid="store-result"][data-store-id="{store_id}"]'
        visible_css(customer, result_css)

        def ask_with(code):
            # The results may be drawn again (an event arrives) between the find and the click:
            # type and tap in one go, from a fresh find, until both land on the same row.
            def asked(d):
                try:
                    row = d.find_element(By.CSS_SELECTOR, result_css)
                    field = row.find_element(By.CSS_SELECTOR, '[data-testid="counter-code-input"]')
                    field.clear()
                    field.send_keys(code)
                    row.find_element(By.CSS_SELECTOR, '[data-testid="request-stamp"]').click()
                    return True
                except StaleElementReferenceException:
                    return False
            wait(customer).until(asked, f"ask with counter code {code}")

        code = visible(owner, "counter-code").text.replace(" ", "")
        ask_with("000000" if code != "000000" else "000001")
        wait(customer).until(EC.text_to_be_present_in_element((By.ID, "message"), "counter code"))
        ask_with(visible(owner, "counter-code").text.replace(" ", ""))
        mine = attribute_is(customer, '[data-testid="my-request"]', "data-status", "pending")
        row = visible_css(owner, f'#pending-list [data-request-id="{mine.get_attribute("data-request-id")}"]', LIVE)
        assert row.find_element(By.CSS_SELECTOR, '[data-testid="at-counter"]').text == "At the counter"
        assert console_problems(customer, expected_statuses=(422,)) == []
