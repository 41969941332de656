"""An accessibility pass over both pages in their main states, with axe-core (bundled by the
axe-core-python wheel from PyPI) against WCAG 2.1 A and AA, and the page's own checks of what
axe cannot see: the skip links come first in the focus order and land where they say, and no
element takes a place of its own in it (tabindex > 0).

Run through Tests/browser/run.sh (see test_stamp_flow.py for the helpers).
"""
import uuid
from pathlib import Path

import axe_core_python
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from test_stamp_flow import (  # noqa: F401  (browsers is a fixture)
    owner_token,
    BASE, attribute_is, browsers, call, console_on_failure, fill, owner_with_store, sign_up, unique, visible,
    click_css, visible_css, wait,
)

AXE = (Path(axe_core_python.__file__).parent / "axe.min.js").read_text()
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


def violations(driver):
    """axe-core's WCAG A/AA violations on the page as it is now, each with up to five nodes."""
    if not driver.execute_script("return !!window.axe"):
        driver.execute_script(AXE)
    return driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        axe.run(document, { runOnly: { type: 'tag', values: arguments[0] }, resultTypes: ['violations'] })
          .then((result) => done(result.violations.map((v) => ({
            rule: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.slice(0, 5).map((n) => `${n.target.join(' ')}: ${n.failureSummary}`) }))))
          .catch((error) => done([{ rule: 'axe-error', help: String(error), nodes: [] }]));""", WCAG)


def assert_accessible(driver, state):
    found = violations(driver)
    assert found == [], f"{state}: " + "\n".join(f"{v['rule']} ({v['impact']}): {v['help']}\n  " + "\n  ".join(v["nodes"])
                                                 for v in found)




def test_both_pages_pass_axe_in_their_main_states(browsers):
    owner = browsers("owner", 1280, 900)
    customer = browsers("customer", 390, 844, phone=True)
    with console_on_failure({"owner": owner, "customer": customer}):
        owner.get(BASE + "/")
        visible(owner, "signin-form")
        assert_accessible(owner, "owner signed out")

        store_name = unique("Axe Cafe")
        store_id = owner_with_store(owner, store_name)
        token = owner_token(owner)
        customer.get(BASE + "/app")
        assert_accessible(customer, "customer signed out")
        sign_up(customer, "Casey", f"{unique('casey')}@example.com")
        visible(customer, "customer")
        casey = customer.execute_script("return JSON.parse(localStorage.getItem('stampd.app.token'))")
        first = call("POST", f"/v1/stores/{store_id}/requests", {"kind": "stamp", "count": 2}, token=casey,
                     headers={"Idempotency-Key": str(uuid.uuid4())})
        call("POST", f"/v1/requests/{first['id']}/approve", token=token)
        # The second through the page, so that the page lists it as its own.
        fill(customer, "search-q", store_name)
        customer.find_element(By.ID, "search-submit").click()
        click_css(customer, f'[data-testid="store-result"][data-store-id="{store_id}"] [data-testid="request-stamp"]')
        visible_css(owner, '#pending-list [data-testid="request-item"]')
        assert_accessible(owner, "owner's counter with a request")
        attribute_is(customer, '[data-testid="my-request"]', "data-status", "pending")
        assert_accessible(customer, "customer with a card and a pending request")

        for view in ["history", "customers", "numbers", "settings"]:
            owner.find_element(By.CSS_SELECTOR, f'.view-tab[data-view="{view}"]').click()
            visible_css(owner, f'[data-view-panel="{view}"]')
            if view == "history":
                wait(owner).until(lambda d: d.find_elements(By.CSS_SELECTOR, '#history-list [data-testid="history-item"]'))
            if view == "customers":
                click_css(owner, '#customers-list [data-testid="customer-row"] button')
                visible_css(owner, '[data-testid="customer-page"]')
            if view == "numbers":
                visible_css(owner, '[data-testid="chart-stamps"] svg.chart-svg')
            assert_accessible(owner, f"owner's {view}")


def test_the_skip_links_lead_the_focus_order_and_land_where_they_say(browsers):
    owner = browsers("owner", 1280, 900)
    with console_on_failure({"owner": owner}):
        owner_with_store(owner, unique("Focus Cafe"))
        owner.get(BASE + "/")
        visible(owner, "store-title")
        owner.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
        focused = lambda: owner.switch_to.active_element  # noqa: E731
        assert focused().text == "Skip to content"
        focused().send_keys(Keys.TAB)
        assert focused().text == "Skip to the customer search"
        focused().send_keys(Keys.ENTER)
        wait(owner).until(lambda d: d.switch_to.active_element.get_attribute("id") == "find-q")
        assert owner.execute_script("return [...document.querySelectorAll('[tabindex]')].filter((n) => n.tabIndex > 0).length") == 0
