"""The owner's settings: the store's profile, its menu and its card and rules, each a form that
saves through PATCH /v1/stores/{id} and shows the server's problem under the field it names.

Run through Tests/browser/run.sh (see test_stamp_flow.py for the helpers).
"""
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from test_stamp_flow import (  # noqa: F401  (browsers is a fixture)
    owner_token,
    BASE, browsers, call, console_on_failure, console_problems, fill, owner_with_store, screenshot, unique, visible,
    click_css, wait,
)




def save(driver, form_id):
    """Submits one settings form and waits for its answer: "Saved." or a problem."""
    form = driver.find_element(By.ID, form_id)
    form.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()
    wait(driver).until(lambda d: form.find_element(By.CSS_SELECTOR, ".form-status").text == "Saved."
                       or d.execute_script("return !!arguments[0].querySelector('[aria-invalid], .error:not(:empty)')", form))
    return form


def field_error(driver, input_id):
    """The message shown under an input the server's problem named (empty when none)."""
    element = driver.find_element(By.ID, input_id)
    if element.get_attribute("aria-invalid") != "true":
        return ""
    return driver.find_element(By.ID, f"{input_id}-error").text


def test_settings_round_trip_with_the_servers_field_errors(browsers):
    """Each form changes what it shows and nothing else; a value the server refuses is said under
    its own input (a coordinate alone, a price that is no whole number, 0 stamps per reward, a
    lifetime under 10 seconds) and changes nothing; after a reload the forms show what was saved."""
    owner = browsers("owner", 1280, 900)
    with console_on_failure({"owner": owner}):
        store_id = owner_with_store(owner, unique("Settings Cafe"))
        token = owner_token(owner)
        click_css(owner, '[data-testid="view-settings"]')
        visible(owner, "profile-form")

        # The profile: a latitude without its longitude is the server's 400 under the longitude.
        fill(owner, "profile-name", "Bean There")
        fill(owner, "profile-address", "12 Harbour Road")
        fill(owner, "profile-hours", "Mon-Fri 8-18")
        fill(owner, "profile-latitude", "37.5665")
        save(owner, "profile-form")
        assert "longitude" in field_error(owner, "profile-longitude")
        assert "address" not in call("GET", f"/v1/stores/{store_id}", token=token)  # nothing changed
        fill(owner, "profile-longitude", "126.978")
        assert field_error(owner, "profile-longitude") == ""  # typing clears the message
        save(owner, "profile-form")
        store = call("GET", f"/v1/stores/{store_id}", token=token)
        assert (store["name"], store["address"], store["openHours"]) == ("Bean There", "12 Harbour Road", "Mon-Fri 8-18")
        assert (store["latitude"], store["longitude"]) == (37.5665, 126.978)
        wait(owner).until(EC.text_to_be_present_in_element((By.ID, "store-title"), "Bean There"))

        # The menu: rows added and removed; a price of 4.5 is refused under that row's price.
        for _ in range(3):
            owner.find_element(By.ID, "menu-add").click()
        fill(owner, "menu-0-name", "Latte")
        fill(owner, "menu-0-price", "4.5")
        fill(owner, "menu-1-name", "Scone")
        fill(owner, "menu-1-price", "300")
        fill(owner, "menu-2-name", "Flat White")
        fill(owner, "menu-2-price", "520")
        save(owner, "menu-form")
        assert "menu[0].price" in field_error(owner, "menu-0-price")
        assert call("GET", f"/v1/stores/{store_id}", token=token)["menu"] == []
        fill(owner, "menu-0-price", "450")
        owner.find_elements(By.CSS_SELECTOR, '[data-testid="menu-remove"]')[1].click()  # the scone goes
        assert owner.find_element(By.ID, "menu-1-name").get_attribute("value") == "Flat White"  # renumbered
        save(owner, "menu-form")
        menu = call("GET", f"/v1/stores/{store_id}", token=token)["menu"]
        assert [(item["name"], item["price"]) for item in menu] == [("Latte", 450), ("Flat White", 520)]

        # The card and its rules: 0 stamps per reward and a lifetime of 6 s are refused, one at a time.
        fill(owner, "rules-stamps", "0")
        save(owner, "rules-form")
        assert "stampsPerReward" in field_error(owner, "rules-stamps")
        fill(owner, "rules-stamps", "8")
        fill(owner, "rules-ttl", "0.1")
        save(owner, "rules-form")
        assert "requestTtlSeconds" in field_error(owner, "rules-ttl")  # shown in minutes, named by the API
        fill(owner, "rules-ttl", "15")
        fill(owner, "rules-reward", "Cappuccino")
        fill(owner, "rules-pending", "2")
        fill(owner, "rules-cooldown", "0")
        fill(owner, "rules-cap", "20")
        owner.find_element(By.ID, "rules-require").click()
        save(owner, "rules-form")
        store = call("GET", f"/v1/stores/{store_id}", token=token)
        assert (store["stampsPerReward"], store["rewardItem"], store["requestTtlSeconds"]) == (8, "Cappuccino", 900)
        assert store["rules"] == {"requireCounterCode": True, "autoApproveAtCounter": False, "pendingPerCustomer": 2,
                                  "stampCooldownSeconds": 0, "dailyStampCap": 20}
        assert store["name"] == "Bean There" and len(store["menu"]) == 2  # each form saves its own fields
        screenshot(owner, "owner-settings.png")

        # After a reload the settings open again and show what was saved.
        owner.get(BASE + "/#settings")
        wait(owner).until(lambda d: d.find_element(By.ID, "profile-name").get_attribute("value") == "Bean There")
        assert owner.find_element(By.ID, "profile-longitude").get_attribute("value") == "126.978"
        assert owner.find_element(By.ID, "menu-1-price").get_attribute("value") == "520"
        assert owner.find_element(By.ID, "rules-ttl").get_attribute("value") == "15"
        assert owner.find_element(By.ID, "rules-require").is_selected()
        assert not owner.find_element(By.ID, "rules-auto").is_selected()
        assert console_problems(owner, expected_statuses=(400,)) == []
