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


# Per plot, what a reader sees of its axes, legend and (for the artifact graph) its layout, read from
# plotly's own computed layout (_fullLayout, _fullData) and the SVG on screen.
GEOMETRY = """
function axisOf(layout, ref) { return layout[ref.charAt(0) + 'axis' + ref.slice(1)]; }
function onAxis(ax, v) { return ax.type === 'log' ? Math.log10(v) : v; }
return Array.from(document.querySelectorAll('div.plotly-graph-div')).map(function (div) {
  var L = div._fullLayout, title = L.title && L.title.text || '';
  var out = {title: title, traces: [], legend_entries: div.querySelectorAll('g.legend g.traces').length,
             wants_legend: div._fullData.filter(function (t) { return t.showlegend !== false; }).length,
             legend_shown: !!L.showlegend, time_span_s: null, graph: null};
  div._fullData.forEach(function (t) {
    if (!t.y || t.name === 'edges') { return; }
    var ax = axisOf(L, t.yaxis), ys = Array.from(t.y).filter(function (v) { return v !== null; });
    if (!ys.length || !ax || !ax.range || ax.visible === false) { return; }  // the graph's axes are layout
    var vs = ys.map(function (v) { return onAxis(ax, v); });
    out.traces.push({name: t.name, axis: t.yaxis, min: Math.min.apply(null, vs), max: Math.max.apply(null, vs),
                     axis_min: Math.min(ax.range[0], ax.range[1]), axis_max: Math.max(ax.range[0], ax.range[1])});
  });
  if (L.xaxis && L.xaxis.type === 'date') {
    out.time_span_s = (Date.parse(L.xaxis.range[1]) - Date.parse(L.xaxis.range[0])) / 1000;
  }
  if (title === 'artifact graph') {
    var box = div.querySelector('svg.main-svg').getBoundingClientRect(), xa = L.xaxis, ya = L.yaxis;
    function px(x, y) { return [box.left + xa._offset + xa.l2p(x), box.top + ya._offset + ya.l2p(y)]; }
    var segments = [];
    div._fullData.filter(function (t) { return t.name === 'edges'; }).forEach(function (t) {
      for (var i = 1; i < t.x.length; i++) {
        if (t.x[i] === null || t.x[i - 1] === null) { continue; }
        segments.push([px(t.x[i - 1], t.y[i - 1]), px(t.x[i], t.y[i])]);
      }
    });
    (L.annotations || []).forEach(function (a) { segments.push([px(a.ax, a.ay), px(a.x, a.y)]); });
    var labels = Array.from(div.querySelectorAll('g.trace g.textpoint text')).map(function (el) {
      var r = el.getBoundingClientRect(); return {text: el.textContent, l: r.left, r: r.right, t: r.top, b: r.bottom};
    });
    var nodes = div._fullData.filter(function (t) { return t.mode === 'markers+text'; });
    var marks = Array.from(div.querySelectorAll('g.trace path.point')).map(function (el) { return el.getBoundingClientRect(); });
    var all = labels.concat(marks.map(function (r) { return {l: r.left, r: r.right, t: r.top, b: r.bottom}; }));
    out.graph = {segments: segments, labels: labels,
                 colours: nodes.map(function (t) { return [t.name, t.marker.color]; }),
                 symbols: [].concat.apply([], nodes.map(function (t) {
                   return t.customdata.map(function (c, i) { return [c[0], c[4], t.marker.symbol[i]]; }); })),
                 plot: {l: box.left + xa._offset, r: box.left + xa._offset + xa._length,
                        t: box.top + ya._offset, b: box.top + ya._offset + ya._length},
                 content: {l: Math.min.apply(null, all.map(function (r) { return r.l; })),
                           r: Math.max.apply(null, all.map(function (r) { return r.r; })),
                           t: Math.min.apply(null, all.map(function (r) { return r.t; })),
                           b: Math.max.apply(null, all.map(function (r) { return r.b; }))}};
  }
  return out;
});
"""


def _crosses(segment, rect) -> bool:
    """Whether a line segment ((x0, y0), (x1, y1)) enters a rectangle (Liang-Barsky clipping)."""
    (x0, y0), (x1, y1) = segment
    dx, dy = x1 - x0, y1 - y0
    low, high = 0.0, 1.0
    for p, q in ((-dx, x0 - rect["l"]), (dx, rect["r"] - x0), (-dy, y0 - rect["t"]), (dy, rect["b"] - y0)):
        if p == 0:
            if q < 0:
                return False
            continue
        t = q / p
        if p < 0:
            low = max(low, t)
        else:
            high = min(high, t)
        if low > high:
            return False
    return True


def check_what_the_plots_say(plots: list[dict]) -> None:
    """The issue's rules for every plot: no trace flattened by another's scale, a legend wherever
    there are several lines, time axes as wide as the builds, and an artifact graph whose colours,
    shapes and edges say what its caption says, without a large empty area."""
    for plot in plots:
        for trace in plot["traces"]:
            axis = trace["axis_max"] - trace["axis_min"]
            own = trace["max"] - trace["min"]
            where = f"{plot['title']}: {trace['name']} on {trace['axis']} {trace}"
            assert trace["axis_min"] <= trace["min"] and trace["max"] <= trace["axis_max"], where
            # flattened = squeezed by another trace's scale: neither its own range nor its distance from
            # zero fills a tenth of the axis (a recall of 0.004 on an axis made for a loss of 6: 0.06%)
            size = max(abs(trace["min"]), abs(trace["max"]))
            assert max(own, size if own else max(size, 0.01)) >= 0.1 * axis, where
        if plot["wants_legend"] > 1:
            assert plot["legend_shown"] and plot["legend_entries"] == plot["wants_legend"], plot
        if plot["time_span_s"] is not None:
            assert plot["time_span_s"] < 15 * 60, plot  # one make's builds: minutes, not an hour
    graph = next(p["graph"] for p in plots if p["graph"])
    colours = dict(graph["colours"])
    assert len(set(colours.values())) == len(colours), colours  # a colour per kind
    for name, role, symbol in graph["symbols"]:
        assert symbol.startswith("square" if role == "source" else "circle"), (name, role, symbol)
    assert {n for n, role, _ in graph["symbols"] if role == "source"} == {"items", "train", "eval"}
    for label in graph["labels"]:
        inner = {"l": label["l"] + 1, "r": label["r"] - 1, "t": label["t"] + 1, "b": label["b"] - 1}
        crossing = [s for s in graph["segments"] if _crosses(s, inner)]
        assert not crossing, f"an edge crosses the label {label['text']!r}: {crossing[:2]}"
    plot_area, content = graph["plot"], graph["content"]
    assert (content["r"] - content["l"]) >= 0.8 * (plot_area["r"] - plot_area["l"]), graph["content"]
    assert (content["b"] - content["t"]) >= 0.7 * (plot_area["b"] - plot_area["t"]), graph["content"]


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

    geometry = browser.execute_script(GEOMETRY)
    for plot in geometry:
        if plot["graph"]:
            plot["graph"]["segments"] = [tuple(map(tuple, segment)) for segment in plot["graph"]["segments"]]
    check_what_the_plots_say(geometry)

    assert len(plots) == EXPECTED_PLOTS, plots
    for plot in plots:
        assert plot["rendered"], plot
        assert plot["traces"] >= 1 and plot["marks"] >= 1 and plot["traces"] == plot["data"], plot
        assert plot["width"] > 300 and plot["height"] > 200, plot
    by_title = {p["title"]: p for p in plots}
    # recall_eval's figure is named for what it measures; the training evaluation's recall apart
    assert by_title["recall@k [index search]: recall"]["data"] == 4  # recall@4, @8, @16 and exact search
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
