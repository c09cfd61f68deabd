"""``ecmf review`` in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, via Selenium),
on a finished run: play a clip, decide clips by click and by keyboard, reload, then finalize applies them.

The run is a copy of the session's finished pipeline run (tests/finished_run.py): real H.264/AAC clips
from ``ecmf synth``, two weak classifiers whose unanimous disagreements make the review queue.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from ecmf_ray.finalize.job import run_finalize
from ecmf_ray.labels import EMOTIONS
from tests.finished_run import FinishedRun, copy_run

CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMEDRIVER is None or shutil.which("chromium") is None,
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "review.png"
# The finalize after the review retrains only what the decisions change and the test reads: one member.
AFTER_REVIEW = ["finalize.ensemble=[{name: ecmf}]", "finalize.ablation=[]", "finalize.pseudo.enabled=false"]


@pytest.fixture
def reviewed_run(finished_run: FinishedRun, tmp_path: Path) -> FinishedRun:
    """A copy of the session's finished run, for the review to write into and finalize to change."""
    return copy_run(finished_run, tmp_path / "run")


@pytest.fixture
def review_url(reviewed_run: FinishedRun):
    """``ecmf review`` on the run, as a user starts it, on a free loopback port; its printed URL."""
    server = subprocess.Popen(
        [sys.executable, "-m", "ecmf_ray.cli", "review", *reviewed_run.args, "review.port=0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        for line in server.stdout:
            lines.append(line)
            if line.startswith("review: open "):
                break
        else:
            pytest.fail(f"ecmf review printed no URL:\n{''.join(lines)}")
        yield line.removeprefix("review: open ").strip(), "".join(lines)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(arg)
    # Chromium and its driver keep their files under the test's folder, never under ~.
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path)}
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER, env=env))
    driver.implicitly_wait(10)
    yield driver
    driver.quit()


def wait_for(condition, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def http_status(url: str, body: dict | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def current_clip(driver) -> tuple[str, str]:
    # Read by script in one call: the page re-renders after every decision, so found elements go stale.
    clip, original = driver.execute_script(
        "return ['clip-id', 'original'].map((id) => document.getElementById(id).textContent)"
    )
    return clip, original


def another_label(original: str, step: int = 1) -> str:
    return EMOTIONS[(EMOTIONS.index(original) + step) % len(EMOTIONS)]


def shown_decisions(driver) -> dict[str, str]:
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#clips li.decided')]"
        ".map((li) => [li.dataset.id, li.dataset.decision]))"
    )


def test_review_in_a_browser_then_finalize_applies_it(reviewed_run, review_url, browser):
    run_dir = reviewed_run.run_dir
    url, log = review_url
    reviewed = Path(run_dir, "final", "reviewed.csv")
    base, token = url.split("/?token=")
    assert url.startswith("http://127.0.0.1:") and len(token) >= 24
    assert f"finalize.relabel.reviewed={reviewed}" in log
    queue = pd.read_csv(Path(run_dir, "final", "review_queue.csv"))
    assert len(queue) >= 4, "the run must queue at least four clips"

    # No token, no page.
    assert http_status(f"{base}/") == 403 and http_status(f"{base}/api/state?token=nope") == 403

    browser.get(url)
    wait_for(lambda: browser.find_elements("css selector", "#clips li"), what="the clip list")
    assert browser.find_element("id", "rerun").text.startswith("ecmf finalize --config ")
    assert browser.find_element("id", "count").text == f"decided 0 of {len(queue)}"
    votes = browser.find_elements("css selector", "#votes tbody tr")
    assert {r.find_elements("tag name", "td")[0].text for r in votes} == {"audio", "text"}
    assert all(r.find_elements("tag name", "td")[2].text != "–" for r in votes)  # classifier probabilities
    assert browser.find_element("id", "ensemble").text in EMOTIONS

    # The clip plays: currentTime advances (H.264/AAC in Debian's Chromium), and the server took a range.
    browser.execute_script("const v = document.getElementById('video'); v.muted = true; v.play();")
    wait_for(lambda: browser.execute_script("return document.getElementById('video').currentTime") > 0.5,
             what="the video to play")  # fmt: skip
    assert browser.execute_script("return document.getElementById('video').seekable.length") == 1

    # Three clips decided by click, one by keyboard (each decision moves on to the next clip).
    expected = {}
    for _ in range(3):
        clip, original = current_clip(browser)
        expected[clip] = another_label(original)
        browser.find_element("css selector", f"#choices button[data-label={expected[clip]}]").click()
        wait_for(lambda clip=clip: current_clip(browser)[0] != clip, what="the next clip")
    clip, original = current_clip(browser)
    expected[clip] = another_label(original, 2)
    browser.find_element("tag name", "body").send_keys(str(EMOTIONS.index(expected[clip]) + 1))
    wait_for(lambda: len(shown_decisions(browser)) == 4, what="the keyboard decision")
    assert browser.find_element("id", "count").text == f"decided 4 of {len(queue)}"

    # A second tab decides the first clip again: the later decision wins, in one row.
    first = next(iter(expected))
    browser.switch_to.new_window("tab")
    browser.get(f"{url}#{first}")
    wait_for(lambda: current_clip(browser)[0] == first, what="the second tab")
    expected[first] = "surprise" if expected[first] != "surprise" else "neutral"
    browser.find_element("css selector", f"#choices button[data-label={expected[first]}]").click()
    wait_for(lambda: shown_decisions(browser).get(first) == expected[first], what="the second tab's decision")
    browser.close()
    browser.switch_to.window(browser.window_handles[0])

    # A reload shows every decision, the second tab's included.
    browser.refresh()
    wait_for(lambda: shown_decisions(browser) == expected, what="the decisions after a reload")
    browser.find_element("css selector", f"#clips li[data-id='{first}']").click()
    assert browser.find_element("id", "decision").text.startswith(expected[first])
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))

    table = pd.read_csv(reviewed, dtype=str)
    assert list(table.columns) == ["video_id", "label", "decided_at"]
    assert table.set_index("video_id")["label"].to_dict() == expected and table["decided_at"].notna().all()

    # A malformed label posted directly: 400, and nothing written.
    before = reviewed.read_bytes()
    assert http_status(f"{url.replace('/?', '/api/decide?')}", {"video_id": first, "label": "joyful"}) == 400
    assert http_status(f"{url.replace('/?', '/api/decide?')}", {"video_id": first}) == 400
    assert reviewed.read_bytes() == before

    # finalize with the decisions: the refined labels are the person's, and the members learnt them.
    run_finalize(reviewed_run.config(*AFTER_REVIEW, f"finalize.relabel.reviewed={reviewed}"))
    relabel = pd.read_parquet(Path(run_dir, "final", "relabel.parquet")).set_index("video_id")
    assert relabel.loc[list(expected), "refined"].to_dict() == expected
    assert relabel.loc[list(expected), "changed"].all()
    learnt = pd.read_parquet(Path(run_dir, "final", "ensemble_oof.parquet")).set_index("video_id")["label"]
    assert learnt[list(expected)].to_dict() == expected
