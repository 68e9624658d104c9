"""A person's path through the dashboard in headless Chromium: sign in with the API token, see the fleet, open a
tenant, start an evacuation through the API and watch its steps arrive on the operation page without a reload,
then watch the events page take in a new operation's events live."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import Plane


def shoot(browser: Any, artifacts: Path, name: str) -> None:
    path = artifacts / f"{name}.png"
    browser.save_screenshot(str(path))
    print(f"screenshot: {path}")


def texts(browser: Any, selector: str) -> list[str]:
    return [element.text for element in browser.find_elements(By.CSS_SELECTOR, selector)]


def test_sign_in_see_the_fleet_and_watch_an_evacuation_live(plane: Plane, browser: Any, artifacts: Path) -> None:
    for name in ("n1", "n2", "n3"):
        plane.api("POST", "/v1/nodes", json={"name": name, "engine_url": f"fake-{name}", "capacity_agents": 6})
    plane.api("POST", "/v1/tenants?wait=true&timeout=60", json={"name": "acme", "agents": 3})
    plane.api("POST", "/v1/tenants?wait=true&timeout=60", json={"name": "globex", "agents": 2})
    wait = WebDriverWait(browser, 30, poll_frequency=0.1)

    # signing in: a wrong token is refused, the right one leads back to the page first asked for
    browser.get(plane.url + "/ui")
    assert "/ui/login" in browser.current_url
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.ID, "sign-in").click()
    refused = wait.until(lambda b: b.find_elements(By.ID, "login-error"))  # the answer page, once it has loaded
    assert "not this control plane" in refused[0].text
    browser.find_element(By.ID, "token").send_keys(plane.token)
    browser.find_element(By.ID, "sign-in").click()
    wait.until(lambda b: b.find_elements(By.ID, "nodes"))
    assert browser.current_url.rstrip("/").endswith("/ui")
    nodes = " ".join(texts(browser, "#nodes td"))
    assert all(name in nodes for name in ("n1", "n2", "n3"))
    assert "acme" in " ".join(texts(browser, "#tenants td"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#agents tr")) == 1 + 5
    shoot(browser, artifacts, "1-overview")

    # a tenant
    browser.find_element(By.LINK_TEXT, "acme").click()
    wait.until(lambda b: "Tenant acme" in b.find_element(By.TAG_NAME, "h1").text)
    assert len(browser.find_elements(By.CSS_SELECTOR, "ol.generations li")) == 3
    shoot(browser, artifacts, "2-tenant")

    # an evacuation started elsewhere, watched live: the step list grows while the page stays the same page
    op = plane.api("POST", "/v1/tenants/acme/evacuate", json={})
    browser.get(f"{plane.url}/ui/operations/{op['id']}")
    before = len(browser.find_elements(By.CSS_SELECTOR, "#steps li"))
    browser.execute_script("window.notReloaded = true")
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#steps li.new")) >= 1)
    wait.until(lambda b: b.find_element(By.ID, "op-state").text == "succeeded")
    assert browser.execute_script("return window.notReloaded") is True
    steps = texts(browser, "#steps li")
    assert len(steps) > before
    assert sum("agent.moved" in line for line in steps) == 3, steps
    assert steps == [step_line for step_line in steps if step_line]  # no empty lines
    final = plane.api("GET", f"/v1/operations/{op['id']}")
    assert len(steps) == len(final["steps"])
    shoot(browser, artifacts, "3-operation-live")

    # the events page takes in a new operation's events as they are written
    browser.get(plane.url + "/ui/events")
    wait.until(lambda b: "on" in b.find_element(By.ID, "live").get_attribute("class"))
    browser.execute_script("window.notReloaded = true")
    plane.api("POST", "/v1/tenants/globex/scale", json={"agents": 3})
    wait.until(lambda b: any("agent.started" in line for line in texts(b, "#events li.new")))
    assert any("scale queued" in line for line in texts(browser, "#events li.new"))
    assert browser.execute_script("return window.notReloaded") is True
    shoot(browser, artifacts, "4-events-live")

    # the tenant page now shows where each generation ran and the evacuation's downtime
    browser.get(plane.url + "/ui/tenants/acme")
    assert len(browser.find_elements(By.CSS_SELECTOR, "ol.generations li")) == 6
    assert "evacuate" in " ".join(texts(browser, "#operations td"))
    shoot(browser, artifacts, "5-tenant-after")

    # the overview again: globex's store stalls (its agents report a growing lag), which the overview plots and
    # raises as an alert once the lag grew at each of the last samples it took
    def lag_alerts(b: Any) -> list[str]:
        b.get(plane.url + "/ui")
        time.sleep(0.6)  # the next health probe
        return [line for line in texts(b, "#alerts li.alert-lag_growing") if "globex" in line]

    wait.until(lambda b: len(lag_alerts(b)) >= 1)
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart polyline")
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart rect")  # durations and downtimes
    browser.set_window_size(1400, 1500)
    shoot(browser, artifacts, "6-overview-after")
