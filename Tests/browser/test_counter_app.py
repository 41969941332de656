"""The store's page as a counter app: a rush of requests, the guards against misclicks, the
connection lost and back, sound held back by the browser, and the layouts of a tablet and a phone.

Run through Tests/browser/run.sh (see test_stamp_flow.py for the helpers).
"""
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from test_stamp_flow import (  # noqa: F401  (browsers is a fixture)
    owner_token, api_customer as customer, api_ask as ask,
    LIVE, attribute_is, browsers, call, console_on_failure, console_problems, decide, new_browser,
    owner_with_store, screenshot, sign_up, unique, visible, visible_css, wait,
)








def request_status(request_id, token):
    return call("GET", f"/v1/requests/{request_id}", token=token)["status"]


def line(request_id):
    return f'#pending-list [data-testid="request-item"][data-request-id="{request_id}"]'


def top(driver, element):
    return driver.execute_script("return arguments[0].getBoundingClientRect().top", element)


def test_a_rush_at_the_counter(browsers):
    """30 requests from 12 customers arrive: one row per customer with a count; a double tap
    approves once and nothing below moves; a large count asks to confirm; a held key decides
    nothing more than a press; an approval can be undone where it was made."""
    owner = browsers("owner", 1024, 768)
    with console_on_failure({"owner": owner}):
        store_id = owner_with_store(owner, unique("Rush Cafe"))
        token = owner_token(owner)
        people = [customer(f"Guest {index:02d}") for index in range(12)]
        asked = {}
        for index in range(30):
            who = people[index % 12]
            asked.setdefault(who["account"]["id"], []).append(ask(store_id, who, {"kind": "stamp", "count": 1}))
        wait(owner, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '#pending-list [data-testid="request-item"]')) == 30)
        groups = owner.find_elements(By.CSS_SELECTOR, '#pending-list [data-testid="request-group"]')
        assert len(groups) == 12
        # The first six customers asked three times each (30 = 12 + 12 + 6): their rows say so.
        counts = sorted(int(group.get_attribute("data-count")) for group in groups)
        assert counts == [2] * 6 + [3] * 6
        first_person = people[0]["account"]["id"]
        first_group = visible_css(owner, f'[data-testid="request-group"][data-customer-id="{first_person}"]')
        assert first_group.find_element(By.CSS_SELECTOR, '[data-testid="group-count"]').text == "3 requests"
        assert "expires in" in first_group.find_element(By.CSS_SELECTOR, '[data-testid="expiry"]').text
        # On a tablet held sideways a request is one row (its text, then its buttons): a rush fits
        # about twelve requests a screen, not five.
        heights = owner.execute_script(
            "return [...document.querySelectorAll('#pending-list .line')].map((n) => n.getBoundingClientRect().height)")
        assert len(heights) == 30 and max(heights) < 70, heights
        screenshot(owner, "owner-rush.png")

        # A double tap on the first Approve: one approval; the line stays in place as "Approved",
        # and the line under it has not moved.
        first, second = asked[first_person][0], asked[first_person][1]
        below = visible_css(owner, line(second["id"]))
        before = top(owner, below)
        target = visible_css(owner, line(first["id"]))
        wait(owner).until(lambda d: d.execute_script(
            "return performance.now() - Number(arguments[0].dataset.movedAt || 0) > 550", target))
        ActionChains(owner).double_click(target.find_element(By.CSS_SELECTOR, '[data-testid="approve"]')).perform()
        settled = visible_css(owner, f'#pending-list [data-testid="decided-in-place"][data-request-id="{first["id"]}"]')
        assert "Approved" in settled.text
        assert top(owner, below) == before
        assert request_status(second["id"], token) == "pending"
        card = call("GET", "/v1/cards", token=people[0]["token"])["cards"][0]
        assert card["stamps"] == 1

        # Undo where it was made (not by the double tap's second half: Undo waits half a second
        # after it appears): the correcting entry takes the stamp back.
        assert "Undone" not in settled.text
        wait(owner).until(lambda d: d.execute_script(
            "return performance.now() - Number(arguments[0].dataset.drawnAt || 0) > 550", settled))
        settled.find_element(By.CSS_SELECTOR, '[data-testid="undo-in-place"]').click()
        wait(owner, LIVE).until(EC.text_to_be_present_in_element(
            (By.CSS_SELECTOR, f'#pending-list [data-request-id="{first["id"]}"]'), "Undone"))
        assert call("GET", "/v1/cards", token=people[0]["token"])["cards"][0]["stamps"] == 0

        # A held key: the auto-repeated presses decide nothing; one press of A decides one.
        target = visible_css(owner, line(second["id"]))
        owner.execute_script("""
            const line = arguments[0];
            line.focus();
            for (const key of ['Enter', 'a', 'a', 'a']) {
              line.dispatchEvent(new KeyboardEvent('keydown', { key, repeat: true, bubbles: true, cancelable: true }));
            }""", target)
        assert request_status(second["id"], token) == "pending"
        owner.execute_script("""arguments[0].dispatchEvent(new KeyboardEvent('keydown', { key: 'a', bubbles: true, cancelable: true }))""",
                             target)
        wait(owner, LIVE).until(lambda _: request_status(second["id"], token) == "approved")

        # A large count asks for a second tap; the first one approves nothing.
        big = ask(store_id, people[11], {"kind": "stamp", "count": 6})
        target = visible_css(owner, line(big["id"]), LIVE)
        decide(owner, target, "approve")
        wait(owner).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, f'{line(big["id"])} [data-testid="approve"]'),
                                                           "Confirm 6 stamps"))
        assert request_status(big["id"], token) == "pending"
        time.sleep(0.5)  # a confirmation is a second, deliberate tap: one at once would be a double tap
        target.find_element(By.CSS_SELECTOR, '[data-testid="approve"]').click()
        wait(owner, LIVE).until(lambda _: request_status(big["id"], token) == "approved")
        assert console_problems(owner) == []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port, database):
    process = subprocess.Popen(
        [os.environ["STAMPD_BINARY"], "--host", "127.0.0.1", "--port", str(port), "--database", database,
         "--migrations", os.environ["STAMPD_MIGRATIONS"], "--insecure-fast-password-hashing", "--new-store-limits", "off",
         "--metrics-port", str(free_port())],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError("the server did not start")


@pytest.mark.skipif(not os.environ.get("STAMPD_BINARY"), reason="needs STAMPD_BINARY (Tests/browser/run.sh)")
def test_a_lost_connection_is_a_banner_and_the_page_is_live_within_2_s_of_the_return(browsers):
    """The server goes away: a full-width banner with a countdown and "Retry now", the queue shown
    as not current and not clickable. The server comes back deep into the backoff: the page is
    live again within 2 s, with no "cannot be reached" left on it."""
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        database = os.path.join(folder, "db.sqlite")
        server = start_server(port, database)
        try:
            base = f"http://127.0.0.1:{port}"
            owner = browsers("owner", 1024, 768)
            with console_on_failure({"owner": owner}):
                owner.get(base + "/")
                sign_up(owner, "Olive Owner", f"{unique('owner')}@example.com")
                visible(owner, "store-name").send_keys("Outage Cafe")
                owner.find_element(By.ID, "store-reward").send_keys("Americano")
                owner.find_element(By.ID, "store-create-submit").click()
                attribute_is(owner, "#connection", "data-state", "live")
                server.send_signal(signal.SIGKILL)
                server.wait()
                banner = visible(owner, "outage", 35)
                assert "Connection lost" in banner.text
                wait(owner).until(lambda d: "Trying again in" in d.find_element(By.ID, "outage-retry-in").text)
                assert owner.execute_script("return document.getElementById('pending-list').inert") is True
                assert visible(owner, "pending-stale").text.startswith("Not current")
                # A call that fails meanwhile says so...
                owner.find_element(By.ID, "find-q").send_keys("1234")
                owner.find_element(By.ID, "find-submit").click()
                wait(owner).until(EC.text_to_be_present_in_element((By.ID, "find-error"), "cannot be reached"))
                screenshot(owner, "owner-outage.png")
                # Let the backoff grow past what a 2 s return would allow without the probe.
                time.sleep(8)
                server = start_server(port, database)
                back = time.monotonic()
                attribute_is(owner, "#connection", "data-state", "live", timeout=5)
                assert time.monotonic() - back <= 2.0
                assert not owner.find_element(By.ID, "outage").is_displayed()
                assert owner.execute_script("return document.getElementById('pending-list').inert") is False
                # ...and once live, nothing says so any more.
                assert "cannot be reached" not in owner.find_element(By.TAG_NAME, "main").text
        finally:
            server.kill()
            server.wait()


def test_sound_held_back_by_the_browser_is_said_and_one_tap_turns_it_on(browsers):
    """With the browser's usual autoplay rule, sound after a reload waits for a tap: the page says
    so, and the tap on its button turns it on."""
    owner = new_browser(1024, 768, sound_needs_a_tap=True)
    try:
        with console_on_failure({"owner": owner}):
            owner_with_store(owner, unique("Quiet Cafe"))
            owner.refresh()
            attribute_is(owner, "#connection", "data-state", "live")
            notice = visible(owner, "sound-blocked")
            assert "holds it back" in notice.text
            owner.find_element(By.ID, "sound-enable").click()
            wait(owner).until(EC.invisibility_of_element_located((By.ID, "sound-blocked")))
            assert owner.execute_script("return document.getElementById('sound-toggle').textContent") == "Sound: on"
    finally:
        owner.quit()


@pytest.mark.parametrize("width,height,phone", [(768, 1024, False), (390, 844, True)])
def test_the_store_page_fits_a_tablet_and_a_phone(browsers, width, height, phone):
    """No horizontal scroll; on a tablet in portrait two columns, with the counter code and the day's
    totals on the first screen; targets of at least 44 px."""
    owner = browsers("owner", width, height, phone=phone)
    with console_on_failure({"owner": owner}):
        store_id = owner_with_store(owner, unique("Layout Cafe"))
        guest = customer("Lena Layout")
        ask(store_id, guest, {"kind": "stamp", "count": 2})
        visible_css(owner, '#pending-list [data-testid="request-item"]', LIVE)
        assert owner.execute_script("return document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        for css in ('[data-testid="approve"]', '[data-testid="reject"]', '#switch-store', '#sound-toggle', '#signout'):
            height_px = owner.execute_script("return document.querySelector(arguments[0]).getBoundingClientRect().height", css)
            assert height_px >= 44, f"{css} is {height_px} px tall"
        if not phone:
            pending = owner.find_element(By.CSS_SELECTOR, '[aria-labelledby="pending-heading"]').rect
            counter = owner.find_element(By.CSS_SELECTOR, '[data-testid="counter-panel"]').rect
            assert counter["x"] > pending["x"] + pending["width"] - 1, "the counter code is in a second column"
            assert owner.execute_script("return document.getElementById('totals-heading').getBoundingClientRect().bottom") <= height
        screenshot(owner, f"owner-{width}.png")
        assert console_problems(owner) == []
