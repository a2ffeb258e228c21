"""``poolparty-raster report --html/--png``: one self-contained page drawn from what the
work_dir holds, checked as text and in a real browser (Debian's Chromium through selenium;
ci/browser/bringup.sh installs them)."""
from __future__ import annotations

import os
import re
import shutil
import sys
import time

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster import cli

cloudpickle.register_pickle_by_value(sys.modules[__name__])

NUM_TASKS = 12
SLEEPIEST = 5
DIED = "died-once"


def sleeps_raises_dies(x):
    """Task 5 sleeps longest, task 8 raises, task 2 dies on its first attempt."""
    if x == 2 and not os.path.exists(DIED):
        open(DIED, "w").close()
        os._exit(9)
    if x == 8:
        raise ValueError("eight")
    time.sleep(0.6 if x == SLEEPIEST else 0.02 * (x % 4))
    return x


@pytest.fixture(scope="module")
def kept_map(tmp_path_factory):
    """The work_dir of a workers-mode map of one-task chunks with a raise and a death."""
    root = tmp_path_factory.mktemp("report")
    work_dir = str(root / "w")
    cwd = os.getcwd()
    os.chdir(root)  # the workers' working directory: where DIED goes
    try:
        with pytest.raises(ValueError):
            pp.LocalPool(2, work_dir=work_dir, progress=False, polling_interval=0.2).map(
                sleeps_raises_dies, range(NUM_TASKS), chunksize=1)
    finally:
        os.chdir(cwd)
    return work_dir


@pytest.fixture(scope="module")
def page(kept_map, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("page") / "report.html")
    assert cli.main(["report", kept_map, "--html", path]) == 0
    with open(path, encoding="utf-8") as f:
        return path, f.read()


def test_the_page_needs_nothing_from_the_network(page):
    _, text = page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "@import" not in text and "<script" not in text and "<link" not in text


def test_the_page_shows_every_chunk_the_death_and_the_slowest_task(page):
    _, text = page
    bars = re.findall(r'<rect class="chunk[^"]*" data-chunk="(\d+)"', text)
    assert sorted(map(int, bars)) == list(range(NUM_TASKS))
    slowest = re.search(r'<table class="slowest">.*?</tr><tr><td>(\d+)</td>', text).group(1)
    assert int(slowest) == SLEEPIEST
    assert text.count('class="death"') == 1 and "ValueError" not in text  # tracebacks stay out
    assert re.search(r'<rect class="chunk[^"]*" data-chunk="8"[^>]*fill="#d62728"', text)
    assert re.search(r'<rect class="chunk retry" data-chunk="2"', text)


def test_text_from_the_work_dir_is_escaped(kept_map, tmp_path):
    from poolparty_raster import htmlreport

    report = cli.report(kept_map)
    report["deaths"][0]["reason"] = "<script>alert(1)</script>"
    assert "<script>" not in htmlreport.render(report)


def test_png_is_drawn_with_matplotlib(kept_map, tmp_path):
    pytest.importorskip("matplotlib", reason="the optional extra plot is not installed")
    path = tmp_path / "report.png"
    cli.main(["report", kept_map, "--png", str(path)])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_without_matplotlib_names_the_extra(kept_map, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    with pytest.raises(SystemExit, match=re.escape("pip install poolparty_raster[plot]")):
        cli.main(["report", kept_map, "--png", str(tmp_path / "report.png")])
    assert not (tmp_path / "report.png").exists()


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for program in ("chromium", "chromedriver"):
        if shutil.which(program) is None:
            return f"`{program}` is not on PATH (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium through its chromedriver; skipped, saying why, where they
    are missing, except in CI (POOLPARTY_REQUIRE_REAL=1), which installs them
    (ci/browser/bringup.sh)."""
    why = _browser_missing()
    if why is not None:
        if os.environ.get("POOLPARTY_REQUIRE_REAL") == "1":
            pytest.fail(f"a real browser is required here (POOLPARTY_REQUIRE_REAL=1), but {why}. "
                        f"Run `sudo bash ci/browser/bringup.sh` first.")
        pytest.skip(f"no browser: {why} (run `sudo bash ci/browser/bringup.sh`)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,1600"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def test_the_page_loads_in_chromium_without_errors_and_shows_the_map(browser, page):
    from selenium.webdriver.common.by import By

    path, _ = page
    browser.get(f"file://{path}")
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.timeline-chart rect.chunk")) == NUM_TASKS
    first = browser.find_element(By.CSS_SELECTOR, "table.slowest tr:nth-child(2) td")
    assert first.text == str(SLEEPIEST)
    timeline = browser.find_element(By.CSS_SELECTOR, "svg.timeline-chart")
    assert timeline.size["width"] > 800 and timeline.size["height"] > 40  # laid out, visible
    for chart in ("done-chart", "wait-chart", "memory-chart"):
        assert browser.find_element(By.CSS_SELECTOR, f"svg.{chart}").is_displayed()
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.timeline-chart .death")) == 1
