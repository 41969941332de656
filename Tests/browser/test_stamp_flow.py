"""End-to-end: the owner's page and the customer's page in headless Chromium against a running stampd.

Run through Tests/browser/run.sh, which starts the server and sets STAMPD_BASE_URL.
Waits use WebDriverWait only; screenshots go to artifacts/ (or STAMPD_ARTIFACTS).
"""
import contextlib
import json
import os
import shutil
import urllib.request
import uuid
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

BASE = os.environ.get("STAMPD_BASE_URL", "").rstrip("/")
ARTIFACTS = Path(os.environ.get("STAMPD_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts"))
PASSWORD = "correct horse battery"
LIVE = 2  # seconds: how fast a change must reach the other page

pytestmark = pytest.mark.skipif(not BASE, reason="STAMPD_BASE_URL is not set (use Tests/browser/run.sh)")


# --- browsers ----------------------------------------------------------------------------------

def new_browser(width, height, phone=False):
    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                     "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(argument)
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


def console_problems(driver):
    """Console errors, e.g. a Content-Security-Policy violation or an uncaught exception."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def wait(driver, timeout=10):
    return WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,))


def visible(driver, element_id, timeout=10):
    return wait(driver, timeout).until(EC.visibility_of_element_located((By.ID, element_id)))


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


def parked_polls():
    for line in call("GET", "/metrics").splitlines():
        if line.startswith("stampd_parked_polls "):
            return float(line.split()[1])
    raise AssertionError("no stampd_parked_polls in /metrics")


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
        assert "Casey Customer" in item.text and "2 stamps" in item.text
        assert "New request" in visible(owner, "notice").text
        assert owner.title.startswith("(1) ")

        # The owner approves; the customer page shows the stamps within 2 s.
        item.find_element(By.CSS_SELECTOR, '[data-testid="approve"]').click()
        card = attribute_is(customer, f'#cards [data-testid="card"][data-store-id="{store_id}"]', "data-stamps", "2",
                            timeout=LIVE)
        assert "2 of 3 stamps" in card.text
        attribute_is(customer, f'[data-testid="my-request"][data-request-id="{request_id}"]', "data-status", "approved",
                     timeout=LIVE)

        # The owner's page: nothing pending, today's totals count the approval.
        wait(owner).until(EC.invisibility_of_element_located(
            (By.CSS_SELECTOR, f'#pending-list [data-request-id="{request_id}"]')))
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
