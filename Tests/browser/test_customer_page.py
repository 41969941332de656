"""The customer page answers where the thumb is: how an ask stands, next to the button that asked
it (sent, approved, not approved and why, expired with "Ask again"); a reward asked for fills
the screen for the barista to read; a gift is said in a sentence before it goes; the card's
history is newest first and names the other person of a gift.

Run through Tests/browser/run.sh (see test_stamp_flow.py for the helpers).
"""
import uuid

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from test_stamp_flow import (  # noqa: F401  (browsers is a fixture)
    BASE, LIVE, PASSWORD, attribute_is, browsers, call, console_on_failure, console_problems, owner_with_store,
    screenshot, sign_up, unique, visible, visible_css, wait,
)


def test_the_state_of_an_ask_is_next_to_its_button(browsers):
    owner = browsers("owner", 1280, 900)
    customer = browsers("customer", 390, 844, phone=True)
    name = unique("Thumb Cafe")
    with console_on_failure({"owner": owner, "customer": customer}):
        store_id = owner_with_store(owner, name)  # 3 stamps per reward
        token = owner.execute_script("return JSON.parse(localStorage.getItem('stampd.owner.token'))")
        call("PATCH", f"/v1/stores/{store_id}", {"requestTtlSeconds": 10}, token=token)  # the shortest, for the expiry
        customer.get(f"{BASE}/app#store={store_id}")
        sign_up(customer, "Tess", f"{unique('tess')}@example.com")
        result = visible_css(customer, f'[data-testid="store-result"][data-store-id="{store_id}"]')

        # Asked from the store's row: sent, then approved, said under the button that asked.
        result.find_element(By.CSS_SELECTOR, '[data-testid="request-stamp"]').click()
        line = result.find_element(By.CSS_SELECTOR, '[data-testid="ask-status"]')
        wait(customer).until(lambda _: line.text.startswith("Sent: 1 stamp, waiting for"))
        pending = call("GET", f"/v1/stores/{store_id}/requests?status=pending", token=token)["requests"][0]
        call("POST", f"/v1/requests/{pending['id']}/approve", token=token)
        wait(customer, LIVE).until(lambda _: line.text == "Approved: 1 stamp.")

        # Asked from the card: rejected with a reason, said under the card's button.
        card_css = f'#cards [data-testid="card"][data-store-id="{store_id}"]'
        card = visible_css(customer, card_css)
        card.find_element(By.CSS_SELECTOR, '[data-testid="card-ask"]').click()
        card_line = card.find_element(By.CSS_SELECTOR, '[data-testid="ask-status"]')
        wait(customer).until(lambda _: card_line.text.startswith("Sent:"))
        pending = call("GET", f"/v1/stores/{store_id}/requests?status=pending", token=token)["requests"][0]
        call("POST", f"/v1/requests/{pending['id']}/reject", {"reason": "Please order first"}, token=token)
        wait(customer, LIVE).until(lambda _: card_line.text == "Not approved: Please order first.")
        assert "bad" in card_line.get_attribute("class")

        # Nobody answers: expired, and "Ask again" asks the same again.
        card.find_element(By.CSS_SELECTOR, '[data-testid="card-ask"]').click()
        wait(customer).until(lambda _: card_line.text.startswith("Sent:"))
        wait(customer, 20).until(lambda _: card_line.text.startswith("Expired"))
        expired = visible_css(customer, '[data-testid="my-request"][data-status="expired"]')
        expired.find_element(By.CSS_SELECTOR, '[data-testid="ask-again"]').click()
        again = expired.find_element(By.CSS_SELECTOR, '[data-testid="ask-status"]')
        wait(customer).until(lambda _: again.text.startswith("Sent: 1 stamp"))
        assert len(call("GET", f"/v1/stores/{store_id}/requests?status=pending", token=token)["requests"]) == 1
        screenshot(customer, "customer-ask-states.png")
        assert console_problems(customer) == []


def test_a_reward_fills_the_screen_and_a_gift_is_said_before_it_goes(browsers):
    owner = browsers("owner", 1280, 900)
    customer = browsers("customer", 390, 844, phone=True)
    name = unique("Reward Cafe")
    with console_on_failure({"owner": owner, "customer": customer}):
        store_id = owner_with_store(owner, name)  # 3 stamps per reward, Americano
        token = owner.execute_script("return JSON.parse(localStorage.getItem('stampd.owner.token'))")
        friend_login = f"{unique('fay')}@example.com"
        call("POST", "/v1/accounts", {"role": "customer", "login": friend_login, "password": PASSWORD, "name": "Fay"})
        customer.get(BASE + "/app")
        sign_up(customer, "Rory", f"{unique('rory')}@example.com")
        visible(customer, "customer")
        rory = customer.execute_script("return JSON.parse(localStorage.getItem('stampd.app.token'))")
        asked = call("POST", f"/v1/stores/{store_id}/requests", {"kind": "stamp", "count": 5}, token=rory,
                     headers={"Idempotency-Key": str(uuid.uuid4())})
        call("POST", f"/v1/requests/{asked['id']}/approve", token=token)  # 5 stamps: a reward and 2 stamps
        card_css = f'#cards [data-testid="card"][data-store-id="{store_id}"]'
        card = attribute_is(customer, card_css, "data-rewards", "1", timeout=LIVE)

        # The reward: a screen of its own, big, until the barista confirms it.
        card.find_element(By.CSS_SELECTOR, '[data-testid="use-reward"]').click()
        screen = visible_css(customer, '[data-testid="reward-screen"]')
        assert screen.find_element(By.CSS_SELECTOR, '[data-testid="reward-item"]').text == "Americano"
        assert "Show this to the barista" in screen.find_element(By.CSS_SELECTOR, '[data-testid="reward-state"]').text
        size = customer.execute_script("return parseFloat(getComputedStyle(document.getElementById('reward-item')).fontSize)")
        assert size >= 36, size  # readable across the counter
        screenshot(customer, "customer-reward.png")
        pending = call("GET", f"/v1/stores/{store_id}/requests?status=pending", token=token)["requests"][0]
        call("POST", f"/v1/requests/{pending['id']}/approve", token=token)
        wait(customer, LIVE).until(EC.text_to_be_present_in_element(
            (By.CSS_SELECTOR, '[data-testid="reward-state"]'), "Enjoy your Americano!"))
        customer.find_element(By.ID, "reward-close").click()
        wait(customer).until(EC.invisibility_of_element_located((By.CSS_SELECTOR, '[data-testid="reward-screen"]')))

        # A gift: the sentence first, then sent on the second tap; a changed count asks again.
        card.find_element(By.CSS_SELECTOR, '[data-testid="give-stamps"]').click()
        to = card.find_element(By.CSS_SELECTOR, '[data-testid="gift-to"]')
        to.send_keys(friend_login)
        count = card.find_element(By.CSS_SELECTOR, '[data-testid="gift-count"]')
        count.clear()
        count.send_keys("2")
        submit = card.find_element(By.CSS_SELECTOR, '[data-testid="gift-submit"]')
        submit.click()
        confirm = card.find_element(By.CSS_SELECTOR, '[data-testid="gift-confirm"]')
        assert confirm.text == f"Give 2 stamps to {friend_login}? This cannot be undone."
        assert submit.text == "Yes, give 2 stamps"
        count.clear()
        count.send_keys("1")
        assert confirm.text == "" and submit.text == "Give"
        submit.click()
        assert confirm.text == f"Give 1 stamp to {friend_login}? This cannot be undone."
        assert card.get_attribute("data-stamps") == "2"  # nothing sent yet
        submit.click()
        attribute_is(customer, card_css, "data-stamps", "1")

        # The history: newest first, the gift naming Fay.
        card.find_element(By.CSS_SELECTOR, '[data-testid="show-ledger"]').click()
        wait(customer).until(lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="my-ledger-row"]'))
        rows = customer.find_elements(By.CSS_SELECTOR, '[data-testid="my-ledger-row"]')
        assert rows[0].get_attribute("data-kind") == "gift_sent" and "Gift to Fay" in rows[0].text
        assert rows[-1].get_attribute("data-kind") == "stamp_added"
        assert console_problems(customer) == []
