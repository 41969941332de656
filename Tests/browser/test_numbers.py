"""The owner's numbers: 30 days of figures drawn as SVG bar charts by the page, checked by
reading the drawing back (bar height × axis maximum / plot height), not by comparing pixels.

Run through Tests/browser/run.sh (see test_stamp_flow.py for the helpers).
"""

from selenium.webdriver.common.by import By

from test_stamp_flow import (  # noqa: F401  (browsers is a fixture)
    owner_token, api_customer as customer, api_ask as ask,
    browsers, call, console_on_failure, console_problems, owner_with_store, screenshot, unique,
    click_css, visible_css, wait,
)

SERIES = ["approved", "rejected", "expired", "cancelled", "undone", "pending"]








def drawn(driver, testid):
    """What a chart draws, read from its geometry: {day: {series: value}}, and its day labels."""
    return driver.execute_script("""
        const chart = document.querySelector(`[data-testid="${arguments[0]}"] svg.chart-svg`);
        const max = Number(chart.dataset.axisMax), height = Number(chart.dataset.plotHeight);
        const days = {};
        for (const day of chart.querySelectorAll('g.day')) {
          days[day.dataset.day] = {};
          for (const bar of day.querySelectorAll('g.series')) {
            const rect = bar.querySelector('rect.bar-fill');
            days[day.dataset.day][bar.dataset.series] = Math.round(Number(rect.getAttribute('height')) * max / height * 1000) / 1000;
          }
        }
        return days;""", testid)


def test_the_numbers_are_drawn_from_the_summary(browsers):
    """Known requests and stamps today: each chart draws today's bar at its value (stacked for
    requests by status), nothing on the 29 days before; the series differ by pattern as well as
    colour; the totals and the table say the same; an approval made while the numbers are open
    shows within seconds."""
    owner = browsers("owner", 1280, 900)
    with console_on_failure({"owner": owner}):
        store_id = owner_with_store(owner, unique("Numbers Cafe"))  # 3 stamps per reward
        token = owner_token(owner)
        dana, eli, finn = customer("Dana"), customer("Eli"), customer("Finn")
        approve = lambda r: call("POST", f"/v1/requests/{r['id']}/approve", token=token)  # noqa: E731
        approve(ask(store_id, dana, {"kind": "stamp", "count": 2}))
        call("POST", f"/v1/requests/{ask(store_id, dana, {'kind': 'stamp', 'count': 1})['id']}/reject", token=token)
        undone = ask(store_id, eli, {"kind": "stamp", "count": 3})
        approve(undone)
        call("POST", f"/v1/requests/{undone['id']}/undo", token=token)
        call("POST", f"/v1/stores/{store_id}/stamps", {"customerId": dana["account"]["id"], "count": 4}, token=token)
        approve(ask(store_id, dana, {"kind": "reward"}))  # 2 + 4 stamps made 2 rewards
        ask(store_id, finn, {"kind": "stamp", "count": 1})  # left pending

        click_css(owner, '[data-testid="view-numbers"]')
        visible_css(owner, '[data-testid="chart-requests"] svg')
        days = call("GET", f"/v1/stores/{store_id}/summary?days=30", token=token)["days"]
        today = days[-1]["day"]

        stamps = drawn(owner, "chart-stamps")
        assert len(stamps) == 30 and list(stamps)[-1] == today
        assert stamps[today] == {"stampsGiven": 6}
        assert all(bars == {} for day, bars in stamps.items() if day != today)
        assert drawn(owner, "chart-rewards")[today] == {"rewardsUsed": 1}
        assert drawn(owner, "chart-requests")[today] == {"approved": 2, "rejected": 1, "undone": 1, "pending": 1}
        customers = drawn(owner, "chart-customers")[today]
        assert customers == {key: days[-1][key] for key in ("newCustomers", "returningCustomers") if days[-1][key]}
        assert customers.get("newCustomers", 0) >= 2  # Dana and Eli at least

        # Not colour alone: each series of a chart has its own pattern, and the legend shows it.
        patterns = owner.execute_script("""
            return [...document.querySelectorAll('[data-testid="chart-requests"] svg.chart-svg g.series')]
              .map((g) => [g.dataset.series, g.querySelector('rect.bar-pattern')?.getAttribute('fill')?.replace(/.*-/, '') ?? 'solid']);""")
        assert len({pattern for _, pattern in patterns}) == len(patterns) == 4, patterns
        legend = owner.find_element(By.CSS_SELECTOR, '[data-testid="chart-requests"] .legend').text
        assert "Approved: 2" in legend and "Undone: 1" in legend and "Pending: 1" in legend
        label = owner.find_element(By.CSS_SELECTOR, '[data-testid="chart-stamps"] svg.chart-svg').get_attribute("aria-label")
        assert "6 stamps in all" in label
        assert owner.find_element(By.CSS_SELECTOR, '[data-testid="numbers-stamps"]').text == "6"
        assert owner.find_element(By.CSS_SELECTOR, '[data-testid="numbers-rewards"]').text == "1"
        owner.find_element(By.CSS_SELECTOR, '[data-testid="chart-stamps"] details summary').click()
        first_row = owner.find_element(By.CSS_SELECTOR, '[data-testid="chart-stamps"] tbody tr')
        assert first_row.find_element(By.CSS_SELECTOR, "td").text == "6"  # newest first
        screenshot(owner, "owner-numbers.png")

        # Live: Finn's request approved elsewhere shows in the open charts within seconds.
        pending = call("GET", f"/v1/stores/{store_id}/requests?status=pending", token=token)["requests"][0]
        call("POST", f"/v1/requests/{pending['id']}/approve", token=token)
        wait(owner, 10).until(lambda d: drawn(d, "chart-stamps")[today] == {"stampsGiven": 7})
        assert drawn(owner, "chart-requests")[today] == {"approved": 3, "rejected": 1, "undone": 1}
        assert console_problems(owner) == []
