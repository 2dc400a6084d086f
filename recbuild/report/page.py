"""The report as one self-contained HTML file: plotly.js inlined once in <head>, one <div> per plot,
tables and notes as plain HTML. Opens offline; nothing is fetched."""

from __future__ import annotations

import errno
import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from recbuild.core.workdir import metrics
from recbuild.report import figures
from recbuild.report.model import Report, Section

PLOT_CONFIG = {"displaylogo": False, "responsive": True,
               "toImageButtonOptions": {"format": "png", "scale": 2}}


@dataclass(frozen=True)
class SectionInfo:
    anchor: str
    title: str
    lead: str  # what the section shows
    missing: str  # what would make it appear, when the recipe has nothing for it


SECTIONS = {
    "recall": SectionInfo("recall", "Recall@k",
                          "Per recall artifact, or per matrix family with one line per variant: the share of "
                          "each query's ground-truth items found in the top k, beside exact search over the "
                          "same vectors (the index's ceiling).",
                          "Nothing to show: no built artifact reports recall@k (recall_eval artifacts do)."),
    "training": SectionInfo("training", "Training curves",
                            "Every metric of each training artifact's evaluation file "
                            "(train_eval_result_v2.txt) against the training step.",
                            "Nothing to show: no built artifact holds a train_eval_result_v2.txt (train and "
                            "tzrec_train_eval artifacts do)."),
    "history": SectionInfo("history", "Metrics across builds",
                           "The headline figures of each artifact at every build that changed it, from "
                           "metrics-history.jsonl in the workdir (hover for the git commit).",
                           "Nothing to show: metrics-history.jsonl records no build of this recipe's "
                           "artifacts yet."),
    "embeddings": SectionInfo("embeddings", "Embedding norms",
                              "The distribution of vector lengths (L2 norms) in each embedding table; "
                              "towers that L2-normalise give one spike at 1.",
                              "Nothing to show: no built artifact holds an embedding table (item_embeddings "
                              "and user_embeddings artifacts do)."),
    "trees": SectionInfo("trees", "TDM tree balance",
                         "Per level of each TDM tree: how many nodes it holds against a full k-ary tree, and "
                         "how evenly the leaves spread under the nodes of the level (fewest, mean, most).",
                         "Nothing to show: no built artifact holds a serving_tree (tdm_tree artifacts do)."),
    "graph": SectionInfo("graph", "Artifact graph", "Every source and artifact of the recipe, coloured by "
                         "kind, and what reads what.", ""),
    "metrics": SectionInfo("metrics", "Metrics table",
                           "Every figure of every metrics.json, as `recbuild metrics` lists them (matrix "
                           "variants as columns).",
                           "Nothing to show: no built artifact has a metrics.json."),
    "provenance": SectionInfo("provenance", "Built by",
                              "What built each artifact, as its MANIFEST.json records it: recbuild's version "
                              "and the toolchain in its key (library versions, Python, machine).",
                              "Nothing to show: no artifact is built yet."),
}

STYLE = """
:root { color-scheme: light; --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       sans-serif; color: var(--ink); background: #fff; }
header { background: var(--soft); border-bottom: 1px solid var(--line); padding: 20px 32px 12px; }
h1 { margin: 0 0 8px; font-size: 24px; }
h2 { margin: 36px 0 4px; font-size: 20px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 20px 0 6px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0 0 12px; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px;
              overflow-wrap: anywhere; }
nav a { margin-right: 18px; color: #0969da; text-decoration: none; white-space: nowrap; }
nav a:hover { text-decoration: underline; }
main { max-width: 1180px; margin: 0 auto; padding: 0 32px 48px; }
p.lead { color: var(--muted); margin: 4px 0 12px; }
.plot { border: 1px solid var(--line); border-radius: 6px; margin: 14px 0; padding: 4px; }
.empty, .pending { border-left: 4px solid #bf8700; background: #fff8c5; padding: 8px 12px; margin: 10px 0;
                   border-radius: 0 6px 6px 0; }
.empty { border-left-color: var(--line); background: var(--soft); }
ul.notes { background: #ffebe9; border-left: 4px solid #cf222e; padding: 8px 12px 8px 30px; margin: 10px 0;
           border-radius: 0 6px 6px 0; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px;
       background: var(--soft); padding: 1px 4px; border-radius: 4px; }
table { border-collapse: collapse; margin: 8px 0 18px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 12px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums;
         font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
th { background: var(--soft); }
footer { color: var(--muted); font-size: 13px; text-align: center; padding: 16px; }
"""


def render(report: Report) -> tuple[str, int]:
    """The page, and how many plots it holds."""
    from plotly.offline import get_plotlyjs, get_plotlyjs_version

    plots = _Plots()
    parts = [
        _section("recall", report.recall, plots.add_all(report.recall.items, figures.recall_figure)),
        _section("training", report.training, plots.add_all(report.training.items, figures.training_figure)),
        _section("history", report.history, plots.add_all(report.history.items, figures.history_figure)),
        _section("embeddings", report.embeddings, plots.add_all(report.embeddings.items, figures.norms_figure)),
        _section("trees", report.trees, plots.add_all(report.trees.items, figures.tree_figure)),
        _section("graph", Section(items=[report.graph]), plots.add_all([report.graph], figures.graph_figure)),
        _section("metrics", report.metrics, [_metrics_tables(t) for t in report.metrics.items]),
        _section("provenance", report.provenance, [_provenance_table(t) for t in report.provenance.items]),
    ]
    e = html.escape
    facts = [("recipe", report.recipe_path), ("workdir", report.workdir), ("generated", report.generated_at),
             ("commit", report.commit or "not in a git repository"), ("recbuild", report.recbuild_version)]
    nav = " ".join(f'<a href="#{info.anchor}">{e(info.title)}</a>' for info in SECTIONS.values())
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="recbuild {e(report.recbuild_version)}">
<meta name="recbuild-plots" content="{plots.count}">
<title>recbuild report: {e(report.recipe_name)}</title>
<style>{STYLE}</style>
<script>/* plotly.js {get_plotlyjs_version()}, inlined so the page opens offline */
{get_plotlyjs()}</script>
</head>
<body>
<header>
<h1>recbuild report: {e(report.recipe_name)}</h1>
<dl class="facts">{''.join(f'<dt>{e(k)}</dt><dd>{e(v)}</dd>' for k, v in facts)}</dl>
<nav>{nav}</nav>
</header>
<main>
{''.join(parts)}
</main>
<footer>written by <code>recbuild report</code>; {plots.count} plot{'s' if plots.count != 1 else ''}</footer>
</body>
</html>
"""
    return page, plots.count


def write(report: Report, path: Path) -> int:
    """Write the page to ``path`` (replaced in one step, so a browser never reads half a page);
    returns the number of plots."""
    page, count = render(report)
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder; the report is one file, e.g. -o report.html",
                                str(path))
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(page, encoding="utf-8")
        os.replace(partial, path)
    except OSError as exc:  # name the file the user asked for, not the temporary one
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        partial.unlink(missing_ok=True)
    return count


class _Plots:
    def __init__(self) -> None:
        self.count = 0

    def add_all(self, items: list, draw: Callable) -> list[str]:
        fragments = []
        for item in items:
            self.count += 1
            figure = draw(item)
            fragments.append('<div class="plot">' + figure.to_html(
                full_html=False, include_plotlyjs=False, div_id=f"plot-{self.count}",
                default_height=f"{figure.layout.height}px", config=PLOT_CONFIG) + "</div>")
        return fragments


def _section(key: str, section: Section, fragments: list[str]) -> str:
    info = SECTIONS[key]
    e = html.escape
    out = [f'<section id="{info.anchor}">', f"<h2>{e(info.title)}</h2>", f'<p class="lead">{e(info.lead)}</p>']
    if section.pending:
        names = ", ".join(section.pending)
        out.append(f'<p class="pending">Not built yet: {e(names)}. Run '
                   f"<code>recbuild make {e(' '.join(section.pending))}</code>, then the report again.</p>")
    elif not section.items and info.missing:
        out.append(f'<p class="empty">{e(info.missing)}</p>')
    if section.notes:
        out.append('<ul class="notes">' + "".join(f"<li>{e(note)}</li>" for note in section.notes) + "</ul>")
    out.extend(fragments)
    out.append("</section>\n")
    return "\n".join(out)


def _provenance_table(table) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(a)}</td><td>{e(k)}</td><td>{e(b)}</td></tr>" for a, k, b in table.rows)
    return f"<table><thead><tr><th>artifact</th><th>kind</th><th>built by</th></tr></thead><tbody>{rows}</tbody></table>"


def _metrics_tables(table) -> str:
    e = html.escape
    out = []
    if table.plain:
        out.append("<table><thead><tr><th>artifact</th><th>metric</th><th>value</th></tr></thead><tbody>")
        for artifact, metric, value in table.plain:
            out.append(f'<tr><td>{e(artifact)}</td><td>{e(metric)}</td>'
                       f'<td class="num">{e(metrics.format_value(value))}</td></tr>')
        out.append("</tbody></table>")
    for family, variants, rows in table.families:
        out.append(f"<h3>{e(family)}: {len(variants)} variant{'s' if len(variants) != 1 else ''}</h3>")
        out.append("<table><thead><tr><th>metric</th>" + "".join(f"<th>{e(v)}</th>" for v in variants)
                   + "</tr></thead><tbody>")
        for metric, values in rows:
            out.append(f"<tr><td>{e(metric)}</td>" + "".join(
                f'<td class="num">{e(metrics.format_value(v))}</td>' for v in values) + "</tr>")
        out.append("</tbody></table>")
    return "\n".join(out)
