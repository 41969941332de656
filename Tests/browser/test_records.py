"""The store's records: the request history searched by customer (name or phone ending), status,
member and date, and the customers with their card and ledger at this store.

Run through Tests/browser/run.sh (see test_stamp_flow.py for the helpers).
"""
import datetime
import uuid

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from test_stamp_flow import (  # noqa: F401  (browsers is a fixture)
    owner_token, api_customer as customer,
    browsers, call, console_on_failure, console_problems, fill, owner_with_store, screenshot, unique,
    click_css, visible_css, wait,
)






def ask(store_id, who, count=1):
    return call("POST", f"/v1/stores/{store_id}/requests", {"kind": "stamp", "count": count}, token=who["token"],
                headers={"Idempotency-Key": str(uuid.uuid4())})


def shown(driver):
    """The history as listed: (customer, status) of each row, top first."""
    rows = driver.find_elements(By.CSS_SELECTOR, '#history-list [data-testid="history-item"]')
    return [(row.find_element(By.CSS_SELECTOR, '[data-testid="history-customer"]').text, row.get_attribute("data-status"))
            for row in rows]


def search(driver):
    """Submits the filters and waits for their answer: a summary, a choice of customers, or a problem."""
    driver.execute_script("document.getElementById('history-summary').textContent = ''")
    driver.find_element(By.ID, "history-submit").click()
    wait(driver).until(lambda d: d.execute_script("""
        return ['history-summary', 'history-matches', 'history-error'].some((id) => document.getElementById(id).textContent)
          || [...document.querySelectorAll('#history-form .field-error')].some((node) => node.textContent);"""))


def test_history_search_and_a_customers_ledger(browsers):
    """Six requests of three customers: the history lists them newest first and narrows by
    status, by member, by date, by a name two customers share (the page asks which) and by a
    phone ending; a customer's name opens their page with the card and its ledger here."""
    owner = browsers("owner", 1280, 900)
    with console_on_failure({"owner": owner}):
        store_id = owner_with_store(owner, unique("Records Cafe"))  # 3 stamps per reward
        token = owner_token(owner)
        phone = f"+82 10 {uuid.uuid4().int % 9000 + 1000} 1234"
        dana_k, dana_l, eli = customer("Dana K", phone), customer("Dana L"), customer("Eli")
        call("POST", f"/v1/requests/{ask(store_id, dana_k, 2)['id']}/approve", token=token)
        call("POST", f"/v1/requests/{ask(store_id, dana_l)['id']}/approve", token=token)
        call("POST", f"/v1/requests/{ask(store_id, dana_l)['id']}/reject", {"reason": "Not today"}, token=token)
        call("POST", f"/v1/requests/{ask(store_id, eli)['id']}/approve", token=token)
        call("POST", f"/v1/stores/{store_id}/stamps", {"customerId": eli["account"]["id"], "count": 3}, token=token)
        ask(store_id, eli)  # pending

        click_css(owner, '[data-testid="view-history"]')
        wait(owner).until(lambda d: len(shown(d)) == 5)
        assert shown(owner) == [("Eli", "pending"), ("Eli", "approved"), ("Dana L", "rejected"), ("Dana L", "approved"),
                                ("Dana K", "approved")]
        assert "Not today" in owner.find_element(By.CSS_SELECTOR, '#history-list [data-status="rejected"]').text

        Select(owner.find_element(By.ID, "history-status")).select_by_value("approved")
        search(owner)
        assert shown(owner) == [("Eli", "approved"), ("Dana L", "approved"), ("Dana K", "approved")]
        Select(owner.find_element(By.ID, "history-status")).select_by_value("")

        # Two customers named Dana: the page asks which one.
        fill(owner, "history-customer", "Dana")
        search(owner)
        matches = owner.find_elements(By.CSS_SELECTOR, '[data-testid="history-match"]')
        assert sorted(m.text.split(" (")[0] for m in matches) == ["Dana K", "Dana L"]
        next(m for m in matches if m.text.startswith("Dana L")).click()
        wait(owner).until(lambda d: shown(d) == [("Dana L", "rejected"), ("Dana L", "approved")])
        # By the end of the phone number.
        fill(owner, "history-customer", "1234")
        search(owner)
        wait(owner).until(lambda d: shown(d) == [("Dana K", "approved")])
        fill(owner, "history-customer", "Zed")
        search(owner)
        assert "No customer" in owner.find_element(By.ID, "history-customer-error").text
        owner.find_element(By.ID, "history-customer").clear()

        # By member, and by date (tomorrow holds nothing; today holds all).
        wait(owner).until(lambda d: len(Select(d.find_element(By.ID, "history-member")).options) > 2)
        Select(owner.find_element(By.ID, "history-member")).select_by_visible_text("Olive Owner")
        search(owner)
        assert [s for _, s in shown(owner)] == ["approved", "rejected", "approved", "approved"]
        Select(owner.find_element(By.ID, "history-member")).select_by_value("")
        tomorrow = (datetime.date.today() + datetime.timedelta(days=1)).isoformat()
        owner.execute_script("document.getElementById('history-from').value = arguments[0]", tomorrow)
        search(owner)
        assert shown(owner) == [] and owner.find_element(By.ID, "history-summary").text == "No requests match."
        owner.execute_script("document.getElementById('history-from').value = arguments[0]; "
                             "document.getElementById('history-to').value = arguments[0]", datetime.date.today().isoformat())
        search(owner)
        assert len(shown(owner)) == 5
        screenshot(owner, "owner-history.png")

        # Stamps and rewards: the rows of the cards, with the same filters (Eli's, by name).
        owner.find_element(By.CSS_SELECTOR, '[data-testid="history-kind-ledger"]').click()
        entries = '#history-list [data-testid="history-entry"]'
        wait(owner).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, entries)) == 5)  # 3 approvals, a stamp, a reward earned
        fill(owner, "history-customer", "Eli")
        search(owner)
        wait(owner).until(lambda d: [e.get_attribute("data-kind") for e in d.find_elements(By.CSS_SELECTOR, entries)]
                          == ["reward_earned", "manual_stamp", "stamp_added"])
        assert "+3 stamps" in owner.find_elements(By.CSS_SELECTOR, entries)[1].text
        owner.find_element(By.ID, "history-customer").clear()
        owner.find_element(By.ID, "history-kind-requests").click()
        wait(owner).until(lambda d: len(shown(d)) == 5)

        # A customer's page from the history: the card and its ledger, newest first.
        owner.find_element(By.CSS_SELECTOR, '#history-list [data-testid="history-customer"]').click()
        page = visible_css(owner, '[data-testid="customer-page"]')
        assert owner.find_element(By.ID, "customer-page-name").text == "Eli"
        assert page.find_element(By.CSS_SELECTOR, '[data-testid="customer-page-card"]').text.startswith("1 stamp · 1 reward · 2 visits")
        kinds = [row.get_attribute("data-kind") for row in page.find_elements(By.CSS_SELECTOR, '[data-testid="ledger-row"]')]
        assert kinds == ["reward_earned", "manual_stamp", "stamp_added"]
        assert "+3 stamps" in page.find_elements(By.CSS_SELECTOR, '[data-testid="ledger-row"]')[1].text
        # The customer list: everyone with a card here, the last changed first.
        wait(owner).until(lambda d: d.find_elements(By.CSS_SELECTOR, '#customers-list [data-testid="customer-row"]'))
        rows = owner.find_elements(By.CSS_SELECTOR, '#customers-list [data-testid="customer-row"]')
        assert rows[0].get_attribute("data-customer-id") == eli["account"]["id"]
        assert dana_k["account"]["id"] in [row.get_attribute("data-customer-id") for row in rows]
        screenshot(owner, "owner-customer.png")
        assert console_problems(owner) == []
