"""Collect what the report shows from a recipe's workdir: pure data (recbuild.report.model), no
plotting and no HTML.

Sections find their inputs by what an artifact folder holds, not only by its kind, so a ``command``
artifact that writes a ``metrics.json``, a ``train_eval_result_v2.txt``, an embedding table or a
``serving_tree`` shows up too. Only folders with a MANIFEST.json are read (a built artifact, not a
half-written or foreign one). An input that cannot be used becomes a note in its section; nothing
here raises for bad files.
"""

from __future__ import annotations

import subprocess
from datetime import datetime
from pathlib import Path

from recbuild import __version__

from recbuild.core.workdir import metrics
from recbuild.core.recipe.graph import Graph
from recbuild.core.workdir.manifest import MANIFEST_NAME, read_manifest
from recbuild.report import readers
from recbuild.report.model import (Provenance, 
    ArtifactGraph, Curve, GraphNode, HistorySeries, MetricsHistory, MetricsTable, NormHistogram,
    RecallCurves, Report, Section, TrainingCurves, TreeBalance,
)

# Kinds expected to produce a section's input: named as "not built yet" while they are missing.
TRAINING_KINDS = ("train", "tzrec_train_eval")
EMBEDDING_KINDS = ("item_embeddings", "user_embeddings", "tzrec_predict")
TREE_KINDS = ("tdm_tree", "tzrec_init_tree", "tzrec_cluster_tree")
RECALL_PREFIX = "recall@"
BASELINE_PREFIX = "exact.recall@"
# History lines per plot: a plain artifact's headline figures, a family's first headline family.
UNHEADLINED_SERIES = 6


def collect(graph: Graph, builders: dict, generated_at: str, norm_sample_rows: int = 200_000) -> Report:
    recipe = graph.recipe
    artifacts = [n for n in graph.order if not graph.nodes[n].is_file_source]
    family_of = {v: family for family, variants in recipe.families.items() for v in variants}
    built = {n: (recipe.workdir / n / MANIFEST_NAME).is_file() for n in artifacts}
    done = [n for n in artifacts if built[n]]
    current, metric_notes = _current_metrics(recipe.workdir, done)

    def pending(wanted) -> list[str]:
        return _hint_names([n for n in artifacts if wanted(n) and not built[n]], recipe.families)

    reports_metrics = [n for n in artifacts if builders[graph.nodes[n].kind].metric_docs]
    # training's own recall@k (micro-averaged over eval pairs) has its curves in the training section
    searched = [n for n in artifacts if graph.nodes[n].kind not in TRAINING_KINDS]
    recall = _recall(searched, current, family_of)
    recall.pending = pending(lambda n: n in searched and "recall@k" in builders[graph.nodes[n].kind].metric_docs)
    training = _training(recipe.workdir, done)
    labels_of = {n: builders[graph.nodes[n].kind].metric_labels for n in artifacts}
    for item in recall.items:  # the same names mean different figures per kind: say whose they are
        item.labels = labels_of.get(recipe.families.get(item.title, [item.title])[0], {})
    for item in training.items:
        item.labels = labels_of.get(item.artifact, {})
    training.pending = pending(lambda n: graph.nodes[n].kind in TRAINING_KINDS)
    history = _history(recipe.workdir, artifacts, family_of, graph, builders)
    for item in history.items:
        item.labels = labels_of.get(recipe.families.get(item.title, [item.title])[0], {})
    history.pending = pending(lambda n: n in reports_metrics)
    embeddings = _embeddings(recipe.workdir, done, norm_sample_rows)
    embeddings.pending = pending(lambda n: graph.nodes[n].kind in EMBEDDING_KINDS)
    trees = _trees(recipe.workdir, done)
    trees.pending = pending(lambda n: graph.nodes[n].kind in TREE_KINDS)
    table = Section(items=[_table(artifacts, current, recipe.families, family_of, graph, builders)] if current else [],
                    notes=metric_notes, pending=pending(lambda n: n in reports_metrics))
    return Report(recipe_name=recipe.name, recipe_path=str(recipe.path), workdir=str(recipe.workdir),
                  generated_at=generated_at, commit=git_commit(recipe.dir), recbuild_version=__version__,
                  recall=recall, training=training, history=history, embeddings=embeddings, trees=trees,
                  graph=_graph(graph, family_of, built), metrics=table,
                  provenance=_provenance(recipe.workdir, done, graph))


def _provenance(workdir: Path, done: list[str], graph: Graph) -> Section[Provenance]:
    """Each built artifact's toolchain (library versions, Python, machine) from its manifest."""
    from recbuild.core.workdir.manifest import read_manifest

    rows, notes = [], []
    for name in done:
        manifest = read_manifest(workdir / name)
        if manifest is None:
            notes.append(f"{name}: MANIFEST.json is unreadable; skipped")
            continue
        tools = [f"{k} {v}" for k, v in sorted((manifest.get("toolchain") or {}).items())]
        tools += [f"{k} {v}" for k, v in sorted((manifest.get("facts") or {}).items())]
        built_by = f"recbuild {manifest.get('recbuild_version', '?')}" + (f"; {', '.join(tools)}" if tools else "")
        rows.append((name, graph.nodes[name].kind, built_by))
    return Section(items=[Provenance(rows)] if rows else [], notes=notes)


def _sections(report: Report) -> list[Section]:
    return [report.recall, report.training, report.history, report.embeddings, report.trees, report.metrics]


def notes(report: Report) -> list[str]:
    """Every input the report skipped, once."""
    return list(dict.fromkeys(note for section in _sections(report) for note in section.notes))


def pending(report: Report) -> list[str]:
    """Every producer not built yet, once, in the order the sections name them."""
    return list(dict.fromkeys(name for section in _sections(report) for name in section.pending))


def _hint_names(names: list[str], families: dict[str, list[str]]) -> list[str]:
    """Names for "not built yet": a family whose every variant is missing is named once."""
    missing = set(names)
    shown: list[str] = []
    for name in names:
        family = next((f for f, variants in families.items() if name in variants), None)
        if family and set(families[family]) <= missing:
            if family not in shown:
                shown.append(family)
        else:
            shown.append(name)
    return shown


def git_commit(folder: Path) -> str | None:
    """The short commit of the repository holding the recipe, "+ uncommitted changes" when its tracked files
    differ from it; None outside a repository."""
    def git(*args: str) -> str | None:
        try:
            ran = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return ran.stdout.strip() if ran.returncode == 0 else None

    commit = git("rev-parse", "--short=12", "HEAD")
    if not commit:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit} + uncommitted changes" if dirty else commit


# -- metrics.json --------------------------------------------------------------------------------
def _current_metrics(workdir: Path, names: list[str]) -> tuple[dict[str, dict[str, float]], list[str]]:
    current, notes = {}, []
    for name in names:
        path = workdir / name / metrics.METRICS_FILE
        if not path.is_file():
            continue
        try:
            numbers = metrics.read(path)
        except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            notes.append(f"{name}: {metrics.METRICS_FILE} is unreadable ({readers.short_reason(exc)}); skipped")
            continue
        if not numbers:
            notes.append(f"{name}: {metrics.METRICS_FILE} holds no numbers; skipped")
            continue
        current[name] = numbers
    return current, notes


def _groups(names: list[str], family_of: dict[str, str]) -> list[tuple[str, list[str]]]:
    """(title, members) in build order: a plain artifact alone, a family with its variants."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(family_of.get(name, name), []).append(name)
    return list(groups.items())


def _k_curve(label: str, numbers: dict[str, float], prefix: str) -> Curve | None:
    points = sorted((int(m[len(prefix):]), v) for m, v in numbers.items()
                    if m.startswith(prefix) and m[len(prefix):].isdigit())
    if not points:
        return None
    return Curve(label, [k for k, _ in points], [v for _, v in points])


def _recall(artifacts: list[str], current: dict[str, dict[str, float]],
            family_of: dict[str, str]) -> Section[RecallCurves]:
    section: Section[RecallCurves] = Section()
    measured = [n for n in artifacts if n in current and _k_curve(n, current[n], RECALL_PREFIX)]
    for title, members in _groups(measured, family_of):
        variants = [_k_curve(m, current[m], RECALL_PREFIX) for m in members]
        baselines = [c for c in (_k_curve(f"exact search ({m})", current[m], BASELINE_PREFIX) for m in members) if c]
        distinct = {(tuple(c.x), tuple(c.y)) for c in baselines}
        if len(distinct) == 1:  # the variants searched the same vectors: one baseline
            baselines = [Curve("exact search", baselines[0].x, baselines[0].y)]
        section.items.append(RecallCurves(title, [v for v in variants if v], baselines))
    return section


# -- evaluation curves ---------------------------------------------------------------------------
def _training(workdir: Path, names: list[str]) -> Section[TrainingCurves]:
    section: Section[TrainingCurves] = Section()
    for name in names:
        path = workdir / name / readers.EVAL_FILE
        if not path.is_file():
            continue
        try:
            results = readers.read_eval_results(path)
        except readers.ReportInputError as exc:
            section.notes.append(f"{name}: {exc}; skipped")
            continue
        if results.skipped_lines:
            section.notes.append(f"{name}: {results.skipped_lines} line(s) of {readers.EVAL_FILE} are not "
                                 "JSON objects with an integer global_step; skipped")
        steps = sorted(results.by_step)
        names_ = metrics.ordered(m for values in results.by_step.values() for m in values)
        curves = []
        for metric in names_:
            points = [(s, results.by_step[s][metric]) for s in steps if metric in results.by_step[s]]
            curves.append(Curve(metric, [s for s, _ in points], [v for _, v in points]))
        if curves:
            section.items.append(TrainingCurves(name, curves, len(steps)))
        else:
            section.notes.append(f"{name}: {readers.EVAL_FILE} has no evaluation yet")
    return section


# -- history -------------------------------------------------------------------------------------
def _history(workdir: Path, artifacts: list[str], family_of: dict[str, str], graph: Graph,
             builders: dict) -> Section[MetricsHistory]:
    section: Section[MetricsHistory] = Section()
    path = workdir / metrics.HISTORY_FILE
    records = metrics.history(workdir)
    try:
        lines = sum(1 for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip())
    except OSError:
        lines = 0
    if lines > len(records):
        section.notes.append(f"{lines - len(records)} line(s) of {metrics.HISTORY_FILE} are not build "
                             "records; skipped")
    known = set(artifacts)
    gone = {r["artifact"] for r in records if r["artifact"] not in known}
    if gone:
        section.notes.append(f"records of {len(gone)} artifact(s) no longer in the recipe not shown: "
                             + ", ".join(sorted(gone)[:5]) + (" ..." if len(gone) > 5 else ""))
    untimed = sum(1 for r in records if r["artifact"] in known and plot_time(r.get("time")) is None)
    if untimed:
        section.notes.append(f"{untimed} record(s) of {metrics.HISTORY_FILE} have no readable time; not drawn")
    by_artifact: dict[str, list[dict]] = {}
    for entry in records:
        if entry["artifact"] in known:
            by_artifact.setdefault(entry["artifact"], []).append(entry)
    for title, members in _groups([n for n in artifacts if n in by_artifact], family_of):
        headline = builders[graph.nodes[members[0]].kind].headline
        is_family = title in graph.recipe.families
        wanted = headline[:1] if is_family else headline
        series = []
        for member in members:
            names = metrics.ordered(m for r in by_artifact[member] for m in r["metrics"])
            if wanted:
                chosen = [m for m in names if metrics.family_of(m) in wanted]
            else:  # no headline declared: the first top-level figures (exact.* and search.* are detail)
                chosen = sorted(names, key=lambda m: "." in m)[: 3 if is_family else UNHEADLINED_SERIES]
            for metric in chosen:
                points = [(plot_time(r.get("time")), r["metrics"][metric], r.get("commit"))
                          for r in by_artifact[member] if readers.is_number(r["metrics"].get(metric))]
                points = [p for p in points if p[0] is not None]
                if points:
                    series.append(HistorySeries(metric, member if is_family else None, [p[0] for p in points], [p[1] for p in points],
                                                [p[2] if isinstance(p[2], str) else None for p in points]))
        if series:
            builds = max(len(by_artifact[m]) for m in members)
            section.items.append(MetricsHistory(title, series, builds))
    return section


def plot_time(value) -> str | None:
    """A record's time as "YYYY-MM-DD HH:MM:SS" in the offset it was recorded in (what a date axis
    reads; "+0000" suffixes are not), or None when it is not a time."""
    if not isinstance(value, str):
        return None
    for parse in (lambda t: datetime.strptime(t, "%Y-%m-%dT%H:%M:%S%z"), datetime.fromisoformat):
        try:
            return parse(value).strftime("%Y-%m-%d %H:%M:%S")
        except ValueError:
            continue
    return None


# -- embeddings ----------------------------------------------------------------------------------
def _embeddings(workdir: Path, names: list[str], budget: int) -> Section[NormHistogram]:
    import pyarrow.parquet as pq

    from recbuild.retrieval.embeddings_io import parquet_files

    section: Section[NormHistogram] = Section()
    for name in names:
        files = parquet_files(workdir / name)
        if not files:
            continue
        try:
            columns = readers.embedding_columns(pq.read_schema(files[0]))
        except (OSError, ValueError) as exc:
            section.notes.append(f"{name}: {Path(files[0]).name} is not a readable parquet file "
                                 f"({readers.short_reason(exc)}); skipped")
            continue
        for column in columns:
            try:
                sample = readers.sample_norms(files, column, budget)
            except readers.ReportInputError as exc:
                section.notes.append(f"{name}: {exc}; skipped")
                continue
            edges, counts = readers.histogram(sample.norms)
            section.items.append(NormHistogram(
                artifact=name, column=column, dim=sample.dim, total_rows=sample.total_rows,
                sampled_rows=len(sample.norms), edges=edges, counts=counts,
                minimum=float(sample.norms.min()), mean=float(sample.norms.mean()),
                maximum=float(sample.norms.max())))
    return section


# -- TDM trees -----------------------------------------------------------------------------------
def _trees(workdir: Path, names: list[str]) -> Section[TreeBalance]:
    """One plot per distinct tree: an export that ships the tree's serving_tree as an asset holds
    the same bytes (its manifest's digest says so) and is named on the tree's plot instead."""
    section: Section[TreeBalance] = Section()
    shown: dict[str, TreeBalance] = {}  # file digest -> its plot
    for name in names:
        path = workdir / name / readers.SERVING_TREE
        if not path.is_file():
            continue
        digest = _recorded_digest(workdir / name, readers.SERVING_TREE)
        if digest and digest in shown:
            shown[digest].also_in.append(name)
            continue
        try:
            stats = readers.tree_levels(path)
        except readers.ReportInputError as exc:
            section.notes.append(f"{name}: {exc}; skipped")
            continue
        levels = list(range(len(stats.nodes)))
        section.items.append(TreeBalance(
            artifact=name, k=stats.k, levels=levels, nodes=stats.nodes,
            capacity=[stats.k ** level for level in levels], leaves_min=stats.leaves_min,
            leaves_mean=stats.leaves_mean, leaves_max=stats.leaves_max, leaves=stats.leaves))
        if digest:
            shown[digest] = section.items[-1]
    return section


def _recorded_digest(folder: Path, relpath: str) -> str | None:
    """The digest the artifact's manifest records for one of its files (None if it records none)."""
    entry = ((read_manifest(folder) or {}).get("files") or {}).get(relpath)
    digest = entry.get("digest") if isinstance(entry, dict) else None
    return digest if isinstance(digest, str) else None


# -- graph and table -----------------------------------------------------------------------------
def _graph(graph: Graph, family_of: dict[str, str], built: dict[str, bool]) -> ArtifactGraph:
    nodes = []
    for name in graph.order:
        node = graph.nodes[name]
        kind = "source" if node.is_file_source else node.kind
        nodes.append(GraphNode(name, kind, family_of.get(name), None if node.is_file_source else built[name],
                               source=node.is_file_source or node.section == "sources"))
    edges = [(edge.upstream, name) for name in graph.order for edge in graph.edges[name]]
    return ArtifactGraph(nodes, edges)


def _table(artifacts: list[str], current: dict[str, dict[str, float]], families: dict[str, list[str]],
           family_of: dict[str, str], graph: Graph, builders: dict) -> MetricsTable:
    def title(name: str, metric: str) -> str:
        return builders[graph.nodes[name].kind].metric_title(metric)

    plain = [(name, title(name, metric), current[name][metric]) for name in artifacts
             if name in current and name not in family_of for metric in metrics.ordered(current[name])]
    tables = []
    for family, variants in families.items():
        shown = [v for v in variants if v in current]
        if not shown:
            continue
        rows = [(title(shown[0], metric), [current[v].get(metric) for v in shown])
                for metric in metrics.ordered(m for v in shown for m in current[v])]
        tables.append((family, shown, rows))
    return MetricsTable(plain, tables)
