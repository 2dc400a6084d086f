"""The report's plots: one plotly figure per item of recbuild.report.model (no HTML here)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from recbuild.report.model import (
    ArtifactGraph, MetricsHistory, NormHistogram, RecallCurves, TrainingCurves, TreeBalance,
)

TEMPLATE = "plotly_white"
HEIGHT = 420
BASELINE_COLOR = "#444444"
MARGIN = dict(l=70, r=30, t=70, b=60)
PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880")  # plotly's
MIN_TIME_SPAN = timedelta(hours=1)
DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


def _layout(fig: go.Figure, title: str, subtitle: str | None = None, height: int = HEIGHT, **axes) -> go.Figure:
    fig.update_layout(template=TEMPLATE, height=height, margin=MARGIN,
                      title=dict(text=title, subtitle=dict(text=subtitle) if subtitle else None, x=0.01),
                      legend=dict(orientation="v", yanchor="top", y=1, xanchor="left", x=1.01),
                      hovermode="closest", **axes)
    return fig


def recall_figure(item: RecallCurves) -> go.Figure:
    fig = go.Figure()
    for curve in item.variants:
        fig.add_trace(go.Scatter(x=curve.x, y=curve.y, name=curve.label, mode="lines+markers",
                                 hovertemplate="%{fullData.name}<br>k=%{x}: recall %{y:.4f}<extra></extra>"))
    for curve in item.baselines:
        fig.add_trace(go.Scatter(x=curve.x, y=curve.y, name=curve.label, mode="lines+markers",
                                 line=dict(dash="dash", color=BASELINE_COLOR if len(item.baselines) == 1 else None),
                                 marker=dict(symbol="diamond"),
                                 hovertemplate="%{fullData.name}<br>k=%{x}: recall %{y:.4f}<extra></extra>"))
    ks = sorted({k for curve in [*item.variants, *item.baselines] for k in curve.x})
    parts = [f"{len(item.variants)} variants" if len(item.variants) > 1 else "",
             "beside exact (brute-force) search over the same vectors" if item.baselines else ""]
    subtitle = " ".join(p for p in parts if p) or None
    return _layout(fig, f"recall@k: {item.title}", subtitle,
                   xaxis=dict(title="k (items retrieved per query, log scale)", type="log", tickvals=ks,
                              ticktext=[str(k) for k in ks]),
                   yaxis=dict(title="recall@k (share of ground-truth items found)", tickformat=".0%",
                              rangemode="tozero"))


def training_figure(item: TrainingCurves) -> go.Figure:
    fig = go.Figure()
    steps = sorted({step for curve in item.curves for step in curve.x})
    for curve in item.curves:
        fig.add_trace(go.Scatter(x=curve.x, y=curve.y, name=curve.label, mode="lines+markers",
                                 hovertemplate="%{fullData.name}<br>step %{x}: %{y:.4f}<extra></extra>"))
    return _layout(fig, f"training: {item.artifact}",
                   f"every metric of its evaluation file, {item.evaluations} evaluation"
                   f"{'s' if item.evaluations != 1 else ''}",
                   xaxis=dict(title="global_step (training steps)", tickformat=",d",
                              # few evaluations: tick exactly those steps (no "2.5" between them)
                              tickvals=steps if len(steps) <= 12 else None),
                   yaxis=dict(title="metric value on the eval data"))


def history_figure(item: MetricsHistory) -> go.Figure:
    """A family's variants get a colour each and its metrics a dash each, so nine lines stay legible."""
    fig = go.Figure()
    variants = list(dict.fromkeys(s.variant for s in item.series if s.variant))
    metric_names = list(dict.fromkeys(s.metric for s in item.series))
    for series in item.series:
        style = {}
        if series.variant:
            style = dict(line=dict(color=PALETTE[variants.index(series.variant) % len(PALETTE)],
                                   dash=DASHES[metric_names.index(series.metric) % len(DASHES)]),
                         legendgroup=series.variant)
        fig.add_trace(go.Scatter(x=series.times, y=series.values, name=series.label, mode="lines+markers", **style,
                                 customdata=[c or "no commit" for c in series.commits],
                                 hovertemplate="%{fullData.name}<br>%{x}: %{y:.4f}<br>%{customdata}"
                                               "<extra></extra>"))
    return _layout(fig, f"metrics across builds: {item.title}",
                   f"{item.builds} build{'s' if item.builds != 1 else ''} recorded in metrics-history.jsonl",
                   xaxis=dict(title="build time (as recorded)", type="date", range=_time_range(item)),
                   yaxis=dict(title="value"))


def _time_range(item: MetricsHistory) -> list[str] | None:
    """At least an hour wide: the variants of one make land seconds apart, and a date axis zoomed
    to seconds labels them with fractions of a second."""
    times = [datetime.strptime(t, "%Y-%m-%d %H:%M:%S") for s in item.series for t in s.times]
    if not times or max(times) - min(times) >= MIN_TIME_SPAN:
        return None
    middle = min(times) + (max(times) - min(times)) / 2
    return [(middle - MIN_TIME_SPAN / 2).strftime("%Y-%m-%d %H:%M:%S"),
            (middle + MIN_TIME_SPAN / 2).strftime("%Y-%m-%d %H:%M:%S")]


def norms_figure(item: NormHistogram) -> go.Figure:
    centers = [(a + b) / 2 for a, b in zip(item.edges, item.edges[1:])]
    widths = [b - a for a, b in zip(item.edges, item.edges[1:])]
    fig = go.Figure(go.Bar(x=centers, y=item.counts, width=widths, name="rows",
                           customdata=list(zip(item.edges, item.edges[1:])), marker_line_width=0,
                           hovertemplate="norm %{customdata[0]:.4f} to %{customdata[1]:.4f}: "
                                         "%{y} rows<extra></extra>"))
    sample = (f"all {item.total_rows:,} rows" if item.sampled_rows == item.total_rows
              else f"{item.sampled_rows:,} of {item.total_rows:,} rows, sampled across the table")
    fig.add_vline(x=item.mean, line_dash="dash", line_color=BASELINE_COLOR,
                  annotation_text=f"mean {item.mean:.4f}", annotation_position="top")
    return _layout(fig, f"embedding norms: {item.artifact} ({item.column}, dim {item.dim})",
                   f"{sample}; min {item.minimum:.4f}, max {item.maximum:.4f}",
                   showlegend=False, bargap=0.02,
                   xaxis=dict(title="L2 norm of the embedding", tickformat=".4~f"),
                   yaxis=dict(title="rows in the sample"))


def tree_figure(item: TreeBalance) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("nodes per level vs a full tree", "leaves under one node of the level"))
    fig.add_trace(go.Bar(x=item.levels, y=item.nodes, name="nodes present",
                         hovertemplate="level %{x}: %{y:,} nodes<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=item.levels, y=item.capacity, name=f"capacity (k={item.k}: k^level)",
                             mode="lines+markers", line=dict(dash="dash", color=BASELINE_COLOR),
                             hovertemplate="level %{x}: room for %{y:,}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=item.levels, y=item.leaves_max, name="most leaves", mode="lines+markers",
                             hovertemplate="level %{x}: at most %{y:,}<extra></extra>"), row=1, col=2)
    fig.add_trace(go.Scatter(x=item.levels, y=item.leaves_mean, name="mean leaves", mode="lines",
                             line=dict(dash="dot"),
                             hovertemplate="level %{x}: %{y:,.1f} on average<extra></extra>"), row=1, col=2)
    fig.add_trace(go.Scatter(x=item.levels, y=item.leaves_min, name="fewest leaves", mode="lines+markers",
                             hovertemplate="level %{x}: at least %{y:,}<extra></extra>"), row=1, col=2)
    fig.update_xaxes(title_text="level (root = 0)", dtick=1)
    fig.update_yaxes(title_text="nodes (log scale)", type="log", row=1, col=1,
                     **_log_ticks(max([*item.nodes, *item.capacity])))
    fig.update_yaxes(title_text="leaves (log scale)", type="log", row=1, col=2, **_log_ticks(max(item.leaves_max)))
    also = f"; the same serving_tree is in {', '.join(item.also_in)}" if item.also_in else ""
    _layout(fig, f"TDM tree balance: {item.artifact}",
            f"{item.leaves:,} leaves on {len(item.levels)} levels, branching k={item.k}{also}", height=HEIGHT + 60)
    return fig.update_layout(margin=dict(MARGIN, t=120))  # room for the subplot titles under the subtitle


def _log_ticks(largest: float) -> dict:
    """Log-axis ticks at 1, 2, 5, 10, 20, 50 ... written out in full (plotly's own minor labels
    print 20 as a small "2")."""
    values, decade = [], 1
    while decade <= max(largest, 1) * 10:
        values += [decade, 2 * decade, 5 * decade]
        decade *= 10
    shown = [v for v in values if v <= max(largest, 1) * 2] or [1]
    if len(shown) > 12:  # many decades: powers of ten only
        shown = [v for v in shown if str(v).startswith("1")]
    return dict(tickvals=shown, ticktext=[f"{v:,}" for v in shown])


def graph_figure(graph: ArtifactGraph) -> go.Figure:
    """Layers left to right by longest path from the sources; inside a layer, nodes sit near the
    mean height of what they read (one barycentre sweep), so a variant lines up with its inputs."""
    upstream = defaultdict(list)
    for up, down in graph.edges:
        upstream[down].append(up)
    layer: dict[str, int] = {}
    for node in graph.nodes:  # build order: upstream first
        layer[node.name] = 1 + max((layer[u] for u in upstream[node.name] if u in layer), default=-1)
    order = {node.name: i for i, node in enumerate(graph.nodes)}
    rows: dict[int, list[str]] = defaultdict(list)
    for node in graph.nodes:
        rows[layer[node.name]].append(node.name)
    height: dict[str, float] = {}
    for column in sorted(rows):
        def barycentre(name: str) -> tuple[float, int]:
            placed = [height[u] for u in upstream[name] if u in height]
            return (-sum(placed) / len(placed) if placed else 0.0, order[name])

        members = sorted(rows[column], key=barycentre) if column else rows[column]
        for i, name in enumerate(members):
            height[name] = (len(members) - 1) / 2 - i
        rows[column] = members
    position = {name: (layer[name], height[name]) for name in height}
    tallest = max((len(members) for members in rows.values()), default=1)

    fig = go.Figure()
    for up, down in graph.edges:
        (x0, y0), (x1, y1) = position[up], position[down]
        fig.add_annotation(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x", ayref="y",
                           showarrow=True, arrowhead=2, arrowsize=1.2, arrowwidth=1.2,
                           arrowcolor="#9a9a9a", standoff=14, startstandoff=14, text="")
    by_kind: dict[str, list] = defaultdict(list)
    for node in graph.nodes:
        by_kind[node.kind].append(node)
    for kind, members in by_kind.items():
        state = ["source (not built by recbuild)" if n.built is None else ("built" if n.built else "not built yet")
                 for n in members]
        fig.add_trace(go.Scatter(
            x=[position[n.name][0] for n in members], y=[position[n.name][1] for n in members],
            mode="markers+text", name=kind, text=[n.name for n in members], textposition="bottom center",
            marker=dict(size=22, symbol=["square" if n.built is None else ("circle" if n.built else "circle-open")
                                         for n in members], line=dict(width=2)),
            customdata=[[kind, n.family or "-", s] for n, s in zip(members, state)],
            hovertemplate="<b>%{text}</b><br>kind %{customdata[0]}<br>matrix family %{customdata[1]}"
                          "<br>%{customdata[2]}<extra></extra>"))
    columns = max(rows, default=0) + 1
    return _layout(fig, "artifact graph",
                   "arrows point from an input to what reads it; filled = built, open = not built yet, "
                   "square = source",
                   height=max(HEIGHT, 160 + 80 * tallest),
                   xaxis=dict(visible=False, range=[-0.6, columns - 0.4]),
                   yaxis=dict(visible=False, range=[-(tallest / 2) - 0.2, tallest / 2]),
                   legend_title_text="kind")
