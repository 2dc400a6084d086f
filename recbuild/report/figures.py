"""The report's plots: one plotly figure per item of recbuild.report.model (no HTML here)."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from datetime import datetime, timedelta

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from recbuild.report.model import (
    ArtifactGraph, MetricsHistory, NormHistogram, RecallCurves, TrainingCurves, TreeBalance,
)

TEMPLATE = "plotly_white"
HEIGHT = 420
BASELINE_COLOR = "#444444"
EDGE_COLOR = "#9a9a9a"
MARGIN = dict(l=70, r=30, t=70, b=60)
PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880")  # plotly's
# a time axis is padded by this share of the data's span on each side, and at least MIN_TIME_PAD
TIME_PAD = 0.1
MIN_TIME_PAD = timedelta(seconds=30)
DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
# Figures a metric is compared with, not a metric of its own: drawn in the panel of the metric they
# qualify (popularity_recall@10 beside recall@10), dashed and grey.
BASELINE_PREFIXES = ("popularity_", "random_", "exact.")
PANEL_HEIGHT = 250
# the artifact graph's colours: one per kind, never reused (plotly's palettes, duplicates dropped)
KIND_COLOURS = tuple(dict.fromkeys(c.lower() for c in (*qualitative.Plotly, *qualitative.Dark24,
                                                         *qualitative.Light24, *qualitative.Alphabet)))


def _layout(fig: go.Figure, title: str, subtitle: str | None = None, height: int = HEIGHT, **axes) -> go.Figure:
    named = [t for t in fig.data if t.showlegend is not False]
    axes.setdefault("showlegend", len(named) > 1)  # every plot of several lines says which is which
    fig.update_layout(template=TEMPLATE, height=height, margin=MARGIN,
                      title=dict(text=title, subtitle=dict(text=subtitle) if subtitle else None, x=0.01),
                      legend=dict(orientation="v", yanchor="top", y=1, xanchor="left", x=1.01),
                      hovermode="closest", **axes)
    return fig


def titled(metric: str, labels: dict[str, str]) -> str:
    """``recall@10 [index search]``: the name with its kind's qualifier (see Builder.metric_labels)."""
    match = re.match(r"^(.*)@\d+$", metric)
    label = labels.get(f"{match.group(1)}@k" if match else metric)
    return f"{metric} [{label}]" if label else metric


def panel_of(metric: str) -> str:
    """The panel a metric is drawn in: its own, or, for a baseline, the metric it qualifies."""
    for prefix in BASELINE_PREFIXES:
        if metric.startswith(prefix) and len(metric) > len(prefix):
            return metric[len(prefix):]
    return metric


def _is_baseline(metric: str) -> bool:
    return panel_of(metric) != metric


def _panels(metrics: list[str]) -> list[str]:
    """One panel per metric (baselines join theirs), in first-seen order: every line gets a y-axis
    scaled to its own figures, so a loss of 6 never flattens a recall of 0.004."""
    return list(dict.fromkeys(panel_of(m) for m in metrics))


def _columns(count: int) -> int:
    """Panels per row: up to three side by side, four as two by two (no row left mostly empty)."""
    return count if count <= 3 else 2 if count == 4 else 3


def _grid(panels: list[str], titles: list[str], **subplots) -> tuple[go.Figure, int]:
    """Small multiples: a figure with one titled subplot per panel, and its height."""
    cols = _columns(len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.09,
                        vertical_spacing=min(0.25, 0.35 / rows) if rows > 1 else 0.0, **subplots)
    return fig, 130 + PANEL_HEIGHT * rows


def _frame_flat_panels(fig: go.Figure, panels: list[str], values: dict[str, list[float]]) -> None:
    """A panel whose figures are all one value (one build, one evaluation) gets an axis of +-10% around
    it; plotly's own is +-1, which leaves 0.004 a dot lost on an axis from -1 to 1."""
    for panel, numbers in values.items():
        if numbers and min(numbers) == max(numbers):
            pad = max(abs(numbers[0]) * 0.1, 0.01)
            fig.update_yaxes(range=[numbers[0] - pad, numbers[0] + pad], **_cell(panels, panel))


def _cell(panels: list[str], panel: str) -> dict:
    cols = _columns(len(panels))
    i = panels.index(panel)
    return dict(row=i // cols + 1, col=i % cols + 1)


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
    return _layout(fig, f"{titled('recall@k', item.labels)}: {item.title}", subtitle,
                   xaxis=dict(title="k (items retrieved per query, log scale)", type="log", tickvals=ks,
                              ticktext=[str(k) for k in ks]),
                   yaxis=dict(title="recall@k (share of ground-truth items found)", tickformat=".0%",
                              rangemode="tozero"))


def training_figure(item: TrainingCurves) -> go.Figure:
    """Small multiples, one panel per metric of the evaluation file (its baselines beside it)."""
    steps = sorted({step for curve in item.curves for step in curve.x})
    panels = _panels([curve.label for curve in item.curves])
    fig, height = _grid(panels, titles=[titled(p, item.labels) for p in panels])
    for curve in item.curves:
        panel = panel_of(curve.label)
        style = (dict(line=dict(dash="dash", color=BASELINE_COLOR), marker=dict(symbol="diamond"))
                 if _is_baseline(curve.label) else
                 dict(line=dict(color=PALETTE[panels.index(panel) % len(PALETTE)])))
        fig.add_trace(go.Scatter(x=curve.x, y=curve.y, name=curve.label, mode="lines+markers", **style,
                                 hovertemplate="%{fullData.name}<br>step %{x}: %{y:.4f}<extra></extra>"),
                      **_cell(panels, panel))
    values: dict[str, list[float]] = defaultdict(list)
    for curve in item.curves:
        values[panel_of(curve.label)] += [y for y in curve.y if y is not None]
    _frame_flat_panels(fig, panels, values)
    # few evaluations: tick exactly those steps (no "2.5" between them)
    fig.update_xaxes(tickformat=",d", tickvals=steps if len(steps) <= 12 else None)
    _layout(fig, f"training: {item.artifact}",
            f"every metric of its evaluation file against global_step (training steps), "
            f"{item.evaluations} evaluation{'s' if item.evaluations != 1 else ''}; one panel per metric, "
            "each with its own y-axis; baselines dashed", height=height)
    return fig.update_layout(margin=dict(MARGIN, t=110))


def history_figure(item: MetricsHistory) -> go.Figure:
    """One panel per metric, each with its own y-axis; a family's variants get a colour each (the
    same in every panel, named once in the legend)."""
    variants = list(dict.fromkeys(s.variant for s in item.series if s.variant))
    panels = _panels([s.metric for s in item.series])
    fig, height = _grid(panels, titles=[titled(p, item.labels) for p in panels], shared_xaxes="all")
    named: set[str] = set()
    for series in item.series:
        panel = panel_of(series.metric)
        if series.variant:
            colour = PALETTE[variants.index(series.variant) % len(PALETTE)]
            name, group = series.variant, series.variant
        else:
            colour = PALETTE[panels.index(panel) % len(PALETTE)]
            name, group = series.metric, series.metric
        dash = "dash" if _is_baseline(series.metric) else "solid"
        fig.add_trace(go.Scatter(x=series.times, y=series.values, name=name, mode="lines+markers",
                                 line=dict(color=colour, dash=dash), legendgroup=group,
                                 showlegend=group not in named,
                                 customdata=[c or "no commit" for c in series.commits],
                                 hovertemplate=f"{series.label}<br>%{{x}}: %{{y:.4f}}<br>%{{customdata}}"
                                               "<extra></extra>"),
                      **_cell(panels, panel))
        named.add(group)
    values: dict[str, list[float]] = defaultdict(list)
    for series in item.series:
        values[panel_of(series.metric)] += [y for y in series.values if y is not None]
    _frame_flat_panels(fig, panels, values)
    fig.update_xaxes(type="date", range=_time_range(item), nticks=4, tickangle=0)
    _layout(fig, f"metrics across builds: {item.title}",
            f"{item.builds} build{'s' if item.builds != 1 else ''} recorded in metrics-history.jsonl; "
            "x: build time (as recorded); one panel per metric, each with its own y-axis",
            height=height, showlegend=len(named) > 1 or len(item.series) > 1)
    return fig.update_layout(margin=dict(MARGIN, t=110))


def _time_range(item: MetricsHistory) -> list[str] | None:
    """The builds' times, padded on each side by a share of their own span (at least half a minute):
    two builds minutes apart fill the axis instead of sitting in the middle of an hour."""
    times = [datetime.strptime(t, "%Y-%m-%d %H:%M:%S") for s in item.series for t in s.times]
    if not times:
        return None
    pad = max((max(times) - min(times)) * TIME_PAD, MIN_TIME_PAD)
    return [(min(times) - pad).strftime("%Y-%m-%d %H:%M:%S"), (max(times) + pad).strftime("%Y-%m-%d %H:%M:%S")]


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


# The artifact graph's geometry, in the page's pixels: the plot area a figure gets on the page (its
# <main> is 1180 px wide), a label's character width and its lines.
GRAPH_PLOT_WIDTH_PX = 1000
GRAPH_ROW_PX = 80
LABEL_PX_PER_CHAR = 7.2
LABEL_LINE_CHARS = 12
MARKER_PX = 22


def _label_lines(name: str) -> list[str]:
    """A node's label in lines of about LABEL_LINE_CHARS, broken after "_" or before "@"."""
    lines, line = [], ""
    for part in re.split(r"(?<=_)|(?=@)", name):
        if line and len(line) + len(part) > LABEL_LINE_CHARS:
            lines.append(line)
            line = part
        else:
            line += part
    return [*lines, line]


def graph_layout(graph: ArtifactGraph) -> tuple[dict, dict[tuple, list], dict[int, float]]:
    """(position of each slot, the slots each edge passes, half the widest label of each column).

    Layers left to right by longest path from the sources. An edge that spans several layers passes
    one waypoint per layer between, shared by every long edge of the same input (as Graphviz's dot
    does, so such edges run in slots of their own instead of through other nodes). Within a layer,
    slots are ordered by a few barycentre sweeps (what they read, then what reads them), which keeps
    edges from crossing one another where it can."""
    upstream = defaultdict(list)
    for up, down in graph.edges:
        upstream[down].append(up)
    layer: dict[str, int] = {}
    for node in graph.nodes:  # build order: upstream first
        layer[node.name] = 1 + max((layer[u] for u in upstream[node.name] if u in layer), default=-1)
    columns: dict[int, list[tuple]] = defaultdict(list)
    for node in graph.nodes:
        columns[layer[node.name]].append(("node", node.name))
    paths: dict[tuple, list] = {}
    before, after = defaultdict(set), defaultdict(set)
    for up, down in graph.edges:
        path = [("node", up)]
        for between in range(layer[up] + 1, layer[down]):
            via = ("via", up, between)
            if via not in columns[between]:
                columns[between].append(via)
            path.append(via)
        path.append(("node", down))
        paths[(up, down)] = path
        for a, b in zip(path, path[1:]):
            after[a].add(b)
            before[b].add(a)
    index = {slot: i for members in columns.values() for i, slot in enumerate(members)}

    def barycentre(slot, neighbours) -> float:
        placed = [index[n] / max(len(columns[_column(n, layer)]) - 1, 1) for n in neighbours[slot]]
        mine = index[slot] / max(len(columns[_column(slot, layer)]) - 1, 1)
        return sum(placed) / len(placed) if placed else mine

    last = max(columns, default=0)
    for _ in range(4):
        for sweep, neighbours in ((range(1, last + 1), before), (range(last - 1, -1, -1), after)):
            for column in sweep:
                members = sorted(columns[column], key=lambda slot: (barycentre(slot, neighbours), index[slot]))
                columns[column] = members
                index.update({slot: i for i, slot in enumerate(members)})
    position = {slot: (column, (len(members) - 1) / 2 - i)
                for column, members in columns.items() for i, slot in enumerate(members)}
    unit_px = GRAPH_PLOT_WIDTH_PX / (last + 1)
    half = {column: min(0.42, max([MARKER_PX / 2] + [max(map(len, _label_lines(slot[1]))) * LABEL_PX_PER_CHAR / 2
                                                       for slot in members if slot[0] == "node"]) / unit_px)
            for column, members in columns.items()}
    return position, paths, half


def _column(slot, layer) -> int:
    return layer[slot[1]] if slot[0] == "node" else slot[2]


def graph_figure(graph: ArtifactGraph) -> go.Figure:
    """Squares are sources, circles artifacts, filled when built; a colour per kind. Each label sits
    under its node and no edge crosses one: an edge leaves and enters a node level with it, over the
    width of the column's widest label, and slants only in the gap between columns."""
    position, paths, half = graph_layout(graph)
    xs, ys = [], []
    fig = go.Figure()
    for (up, down), path in paths.items():
        points = []
        for i, slot in enumerate(path):
            x, y = position[slot]
            h = half[x]
            if i == 0:
                points += [(x, y), (x + h, y)]
            elif i == len(path) - 1:
                points.append((x - h, y))
                fig.add_annotation(x=x, y=y, ax=x - h, ay=y, xref="x", yref="y", axref="x", ayref="y",
                                   showarrow=True, arrowhead=2, arrowsize=1.2, arrowwidth=1.2,
                                   arrowcolor=EDGE_COLOR, standoff=MARKER_PX / 2 + 2, text="")
            else:
                points += [(x - h, y), (x + h, y)]
        xs += [p[0] for p in points] + [None]
        ys += [p[1] for p in points] + [None]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="edges", showlegend=False, hoverinfo="skip",
                             line=dict(color=EDGE_COLOR, width=1.2)))
    kinds = list(dict.fromkeys(node.kind for node in graph.nodes))
    for kind in kinds:
        members = [n for n in graph.nodes if n.kind == kind]
        state = ["source file" if n.built is None else ("built" if n.built else "not built yet") for n in members]
        fig.add_trace(go.Scatter(
            x=[position[("node", n.name)][0] for n in members], y=[position[("node", n.name)][1] for n in members],
            mode="markers+text", name=kind, text=["<br>".join(_label_lines(n.name)) for n in members],
            textposition="bottom center",
            marker=dict(size=MARKER_PX, color=KIND_COLOURS[kinds.index(kind) % len(KIND_COLOURS)],
                        symbol=[("square" if n.source else "circle") + ("" if n.built is not False else "-open")
                                for n in members], line=dict(width=2)),
            customdata=[[n.name, kind, n.family or "-", s, "source" if n.source else "artifact"]
                        for n, s in zip(members, state)],
            hovertemplate="<b>%{customdata[0]}</b><br>%{customdata[4]}, kind %{customdata[1]}<br>matrix family "
                          "%{customdata[2]}<br>%{customdata[3]}<extra></extra>"))
    heights = [y for _, y in position.values()] or [0.0]
    columns = max(half, default=0) + 1
    rows = max(heights) - min(heights) + 1
    label_rows = max((len(_label_lines(n.name)) for n in graph.nodes), default=1)
    below = (MARKER_PX / 2 + 6 + 15 * label_rows) / GRAPH_ROW_PX  # room for the lowest labels
    _layout(fig, "artifact graph",
            "arrows point from an input to what reads it; squares are the recipe's sources, circles its "
            "artifacts; filled = built (or a source file), open = not built yet; colour = kind",
            height=int(110 + 70 + GRAPH_ROW_PX * (rows - 1 + below + 0.4)),
            xaxis=dict(visible=False, range=[-0.5, columns - 0.5], fixedrange=False),
            yaxis=dict(visible=False, range=[min(heights) - below, max(heights) + 0.4]),
            showlegend=True, legend_title_text="kind")
    return fig.update_layout(margin=dict(l=20, r=20, t=80, b=20),
                             legend=dict(orientation="h", yanchor="top", y=-0.01, xanchor="left", x=0))
