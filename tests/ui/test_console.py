"""The web console in a real headless Chromium, on a catalog that a tiny learning run filled."""

from __future__ import annotations

import pytest

from tests.ui.conftest import TOKEN

pytestmark = pytest.mark.timeout(300)


def _open(browser, server: str, path: str):
    from selenium.webdriver.common.by import By

    browser.get(server + path)
    return browser.find_element(By.TAG_NAME, "h1").text


def _text(browser, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, selector).text


def _click_and_wait(browser, element) -> None:
    """Click ``element`` and wait until the browser shows the next document, loaded.

    A mark set on the old document is gone on the new one. Chromium may answer a question about
    the old document's nodes mid-navigation with an inspector error rather than a stale-element
    one, so every WebDriver error while waiting means "not yet"."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_script("window.__before_click = true;")
    element.click()
    WebDriverWait(browser, 60, ignored_exceptions=(WebDriverException,)).until(
        lambda b: b.execute_script("return window.__before_click === undefined && "
                                   "document.readyState === 'complete';"))


def _head_state(learned) -> int:
    from skillstore.catalog import current_head, get_base

    with learned.env.catalog.session() as s:
        return current_head(s, get_base(s, "tiny-llama").id).state_id


def test_every_page_opens_and_shows_the_learning_run(browser, server, learned, shoot):
    reverse, sort = learned.packs["reverse"], learned.packs["sort"]
    head = _head_state(learned)

    assert _open(browser, server, "/ui/bases") == "Bases"
    assert _text(browser, "#base-tiny-llama .head-state") == f"state {head}"
    held = _text(browser, "#base-tiny-llama table")
    assert "reverse@v1" in held and "sort@v1" in held
    shoot("bases")

    assert _open(browser, server, "/ui/jobs") == "Jobs"
    rows = _text(browser, "#jobs tbody")
    assert all(f"{j}" in rows for j in learned.jobs) and rows.count("succeeded") == 2
    shoot("jobs")

    assert _open(browser, server, f"/ui/jobs/{learned.jobs[0]}") == f"Job {learned.jobs[0]}"
    page = _text(browser, "main")
    assert all(stage in page for stage in ("prepare", "train", "compress", "evaluate", "gate"))
    shoot("job")

    assert _open(browser, server, "/ui/packs?skill=sort") == "Packs"
    listed = _text(browser, "#packs")
    assert "sort@v1" in listed and "reverse@v1" not in listed
    _open(browser, server, "/ui/packs")
    shoot("packs")

    assert _open(browser, server, f"/ui/packs/{sort}") == "sort@v1"
    assert _text(browser, "#verdict") == "promoted"
    checks = _text(browser, "#checks")
    assert "gain" in checks and "[" in checks  # every check with its interval
    assert "gate" in _text(browser, "#audit") or "promoted" in _text(browser, "#audit")
    shoot("pack")

    assert _open(browser, server, f"/ui/states/{head}") == f"State {head}"
    report = _text(browser, "#report")
    assert "Accuracy matrix" in report and "Router confusion matrix" in report
    assert "against the parent state" in report
    shoot("state")

    assert _open(browser, server, "/ui/states") == "States"
    assert _open(browser, server, "/ui/experiments") == "Experiments"
    assert "console" in _text(browser, "main table")
    assert _open(browser, server, f"/ui/packs/{reverse}/lineage") == "Lineage of reverse@v1"


def test_a_lineage_node_links_to_its_pack(browser, server, learned, shoot):
    from selenium.webdriver.common.by import By

    reverse, derived = learned.packs["reverse"], learned.packs["derived"]
    assert _open(browser, server, f"/ui/packs/{reverse}/lineage") == "Lineage of reverse@v1"
    shoot("lineage")
    _click_and_wait(browser, browser.find_element(By.CSS_SELECTOR,
                                                  f'svg a[data-pack="{derived}"]'))
    assert _text(browser, "h1") == "reverse@v2", (browser.current_url, _text(browser, "main"))
    assert browser.current_url.endswith(f"/ui/packs/{derived}")


def test_an_experiment_shows_its_report_and_links_its_packs_both_ways(browser, server, learned,
                                                                     shoot):
    from selenium.webdriver.common.by import By

    exp, made = learned.experiment, learned.experiment_packs
    assert _open(browser, server, f"/ui/experiments/{exp}") == "Experiment console"
    report = _text(browser, "#report")
    assert "graft" in report and "naive_ft" in report and "Mean accuracy matrices" in report
    assert len(browser.find_elements(By.CSS_SELECTOR, "#report svg")) >= 2  # heatmaps, plot
    shoot("experiment")
    link = browser.find_element(By.CSS_SELECTOR, f'#runs a[href$="/packs/{made[0]}"]')
    _click_and_wait(browser, link)
    assert browser.current_url.endswith(f"/ui/packs/{made[0]}")
    assert "candidate" in _text(browser, "main p")
    back = browser.find_element(By.LINK_TEXT, f"console #{exp}")
    _click_and_wait(browser, back)
    assert _text(browser, "h1") == "Experiment console"


def _act(browser, form: str, *, token: str, reason: str) -> None:
    """Fill and submit an action form, then wait for the page the server answers with."""
    from selenium.webdriver.common.by import By

    box = browser.find_element(By.ID, form)
    box.find_element(By.NAME, "token").send_keys(token)
    box.find_element(By.NAME, "reason").send_keys(reason)
    _click_and_wait(browser, box.find_element(By.TAG_NAME, "button"))


def test_an_action_without_a_token_or_reason_is_refused(browser, server, learned):
    derived = learned.packs["derived"]
    _open(browser, server, f"/ui/packs/{derived}")
    _act(browser, "action-reject", token="", reason="looks wrong")
    assert _text(browser, "h1") == "Refused"
    assert "needs a token" in _text(browser, "#error-message")
    _open(browser, server, f"/ui/packs/{derived}")
    _act(browser, "action-reject", token=TOKEN, reason="")
    assert "needs a reason" in _text(browser, "#error-message")
    _open(browser, server, f"/ui/packs/{derived}")
    assert "candidate" in _text(browser, "main p")


def test_promote_with_a_token_moves_the_head(browser, server, learned):
    derived = learned.packs["derived"]
    before = _head_state(learned)
    _open(browser, server, f"/ui/packs/{derived}")
    _act(browser, "action-promote", token=TOKEN, reason="recompressed copy is as good")
    assert _text(browser, "h1") == "reverse@v2"
    assert "promoted" in _text(browser, "main p")
    assert "recompressed copy is as good" in _text(browser, "#audit")
    after = _head_state(learned)
    assert after != before
    _open(browser, server, "/ui/bases")
    assert _text(browser, "#base-tiny-llama .head-state") == f"state {after}"
    assert "reverse@v2" in _text(browser, "#base-tiny-llama table")


def test_the_job_list_refreshes_without_a_reload(browser, server, learned):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.workerenv import queue_job

    _open(browser, server, "/ui/jobs")
    browser.execute_script("window.notReloaded = true")
    with learned.env.catalog.session() as s:
        job_id = queue_job(s, learned.env.settings, "sort", send=False)
    row = WebDriverWait(browser, 10).until(
        lambda b: b.find_elements(By.ID, f"job-{job_id}"))[0]
    assert "queued" in row.text
    assert browser.execute_script("return window.notReloaded") is True
