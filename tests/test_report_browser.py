"""`recbuild report` in a real browser: the dssm template with a matrix of three IVF indexes, built
small, rendered by headless Chromium (Debian's chromium + chromium-driver, driven by Selenium with
the system chromedriver, so nothing is downloaded). Every plot must have drawn, the console must hold
no error, the page must load nothing from elsewhere, and a screenshot is saved under tmp_path.

Skips, saying which of them is missing, when Chromium, its driver or Selenium is missing, unless
RECBUILD_REQUIRE_BROWSER=1 (CI sets it), which turns the skip into a failure. RECBUILD_CHROMIUM and
RECBUILD_CHROMEDRIVER point at other binaries (or at nothing, to see the skip on a machine that has
them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("RECBUILD_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("RECBUILD_CHROMEDRIVER", "/usr/bin/chromedriver"))
# Without the networking flags, this machine's closed network refuses Chromium's background
# connections, many at a time; a fresh profile keeps runs independent.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,900"]
SMALL = ["--set", "vars.n_items=300", "--set", "vars.n_users=200", "--set", "vars.train_rows=3000",
         "--set", "vars.eval_rows=800",
         "--set", "artifacts.recall.nprobe=1",  # one list per query: the three nlist values differ
         "--set", "artifacts.checkpoints.eval_every=2"]  # a curve, not one evaluation
RECIPE = """
version: 1
extends: dssm
artifacts:
  index: {matrix: {nlist: [4, 8, 16]}}
"""
# recall (one family), training, metrics across builds (the recall family, the training), item
# embedding norms, the artifact graph
EXPECTED_PLOTS = 6


def _browser_or_skip():
    # each of the three is looked for on its own, and the reason names every one that is missing
    missing = [f"{what} ({path})" for what, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER))
               if not path.is_file()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    if not missing:
        return
    reason = (f"{' and '.join(missing)} missing; install with "
              "`apt-get install -y chromium chromium-driver` (.ci/run does)")
    if os.environ.get("RECBUILD_REQUIRE_BROWSER") == "1":
        pytest.fail(f"RECBUILD_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def browser():
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="recbuild-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the system driver: Selenium Manager never looks for (or downloads) one
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# Per plot: how many traces plotly drew into its SVG, and the SVG's size on screen.
DRAWN = """
return Array.from(document.querySelectorAll('div.plotly-graph-div')).map(function (div) {
  var svg = div.querySelector('svg.main-svg');
  var box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  return {id: div.id, rendered: div.classList.contains('js-plotly-plot'),
          traces: div.querySelectorAll('svg.main-svg g.trace').length,
          marks: div.querySelectorAll('svg.main-svg g.trace path, svg.main-svg g.trace .point').length,
          data: div.data ? div.data.length : 0,
          title: div.layout && div.layout.title ? div.layout.title.text : '',
          width: box.width, height: box.height};
});
"""


def test_report_renders_in_a_browser(project, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    project.recipe(RECIPE)
    built = project.run("make", *SMALL)
    assert built.code == 0, built.err
    result = project.run("report", *SMALL)
    assert result.code == 0, result.err
    page = project.path / "build" / "report.html"
    assert result.out.strip() == f"wrote {page} ({EXPECTED_PLOTS} plots)"

    browser.get(page.as_uri())
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && "
        "Array.from(document.querySelectorAll('div.plotly-graph-div'))"
        ".every(function (d) { return d.classList.contains('js-plotly-plot'); })"))
    plots = browser.execute_script(DRAWN)

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(height, 16000))
    screenshot = tmp_path / "report.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 50_000

    assert len(plots) == EXPECTED_PLOTS, plots
    for plot in plots:
        assert plot["rendered"], plot
        assert plot["traces"] >= 1 and plot["marks"] >= 1 and plot["traces"] == plot["data"], plot
        assert plot["width"] > 300 and plot["height"] > 200, plot
    by_title = {p["title"]: p for p in plots}
    assert by_title["recall@k: recall"]["data"] == 4  # recall@4, recall@8, recall@16 and exact search
    assert by_title["training: checkpoints"]["data"] >= 3
    assert by_title["embedding norms: item_embeddings (item_tower_emb, dim 32)"]["data"] == 1
    assert "artifact graph" in by_title
    assert sum(title.startswith("history") or "across builds" in title for title in by_title) == 2, by_title

    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == [], severe
    # self-contained: the page fetched nothing besides itself
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0


@pytest.mark.parametrize("absent", [["CHROMIUM"], ["CHROMEDRIVER"], ["CHROMIUM", "CHROMEDRIVER"]])
def test_a_missing_browser_skips_unless_required(monkeypatch, tmp_path, absent):
    """Whichever of chromium and chromedriver this machine has or lacks, a missing one skips with a
    reason naming it, and RECBUILD_REQUIRE_BROWSER=1 makes that a failure."""
    import sys

    this = sys.modules[__name__]
    present = tmp_path / "present"
    present.write_text("")  # stands for a binary that exists, whether or not this machine has one
    for name in ("CHROMIUM", "CHROMEDRIVER"):
        monkeypatch.setattr(this, name, tmp_path / f"no-{name.lower()}" if name in absent else present)
    names = " and ".join(f"{n.lower()} ({tmp_path / f'no-{n.lower()}'})" for n in absent)
    monkeypatch.delenv("RECBUILD_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        _browser_or_skip()
    assert str(skipped.value.msg).startswith(f"{names} missing; install with "
                                             "`apt-get install -y chromium chromium-driver`")
    monkeypatch.setenv("RECBUILD_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception) as failed:
        _browser_or_skip()
    assert str(failed.value.msg).startswith(f"RECBUILD_REQUIRE_BROWSER=1 but {names} "
                                            "missing")
