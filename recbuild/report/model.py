"""What the report shows, as plain data (no plotting library, no HTML): the collector fills it, the
renderer draws it, and tests check it without a browser."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Curve:
    """One line of a plot: ``y`` against ``x``, named ``label`` in the legend."""

    label: str
    x: list[float]
    y: list[float]


@dataclass
class RecallCurves:
    """recall@k of one recall artifact, or of every variant of a matrix family, beside the
    exact-search baseline (``exact.recall@k``; one curve when every variant has the same)."""

    title: str  # the artifact or family name
    variants: list[Curve]  # x = k
    baselines: list[Curve]
    labels: dict[str, str] = field(default_factory=dict)  # the kind's metric_labels ("recall@k": "index search")


@dataclass
class TrainingCurves:
    """Every metric of one evaluation file (``train_eval_result_v2.txt``) against global_step."""

    artifact: str
    curves: list[Curve]  # x = global_step
    evaluations: int
    labels: dict[str, str] = field(default_factory=dict)  # the kind's metric_labels


@dataclass
class HistorySeries:
    metric: str  # "recall@50"
    variant: str | None  # "recall@4" when the plot shows a matrix family
    times: list[str]  # "YYYY-MM-DD HH:MM:SS", in the offset the build recorded
    values: list[float]
    commits: list[str | None]

    @property
    def label(self) -> str:
        return f"{self.variant} · {self.metric}" if self.variant else self.metric


@dataclass
class MetricsHistory:
    """Headline figures of one artifact (or family) over its builds, from metrics-history.jsonl."""

    title: str
    series: list[HistorySeries]
    builds: int
    labels: dict[str, str] = field(default_factory=dict)  # the kind's metric_labels


@dataclass
class NormHistogram:
    """L2 norms of an embedding column, from rows sampled across the table's row groups."""

    artifact: str
    column: str
    dim: int
    total_rows: int
    sampled_rows: int
    edges: list[float]  # len(counts) + 1
    counts: list[int]
    minimum: float
    mean: float
    maximum: float


@dataclass
class TreeBalance:
    """Per level of a TDM tree (root = level 0): nodes present vs the full k-ary capacity, and the
    leaves (deepest-level nodes) under each node of the level."""

    artifact: str
    k: int
    levels: list[int]
    nodes: list[int]
    capacity: list[int]  # k ** level
    leaves_min: list[int]
    leaves_mean: list[float]
    leaves_max: list[int]
    leaves: int
    also_in: list[str] = field(default_factory=list)  # artifacts holding the same serving_tree bytes


@dataclass
class GraphNode:
    name: str
    kind: str  # "source" for a plain file source
    family: str | None  # the matrix family of a variant
    built: bool | None  # None for a file source (nothing to build)
    source: bool = False  # declared under the recipe's sources: (a file source or generated sample data)


@dataclass
class ArtifactGraph:
    nodes: list[GraphNode]  # build order
    edges: list[tuple[str, str]]  # (upstream, downstream)


@dataclass
class MetricsTable:
    """The current figures, as `recbuild metrics` lists them: plain artifacts row by row, a matrix
    family with its variants as columns."""

    plain: list[tuple[str, str, float]]  # (artifact, metric, value)
    families: list[tuple[str, list[str], list[tuple[str, list[float | None]]]]]  # (family, variants, rows)


@dataclass
class Provenance:
    """What built each artifact, as its MANIFEST.json records it."""

    rows: list[tuple[str, str, str]]  # artifact, kind, "recbuild 0.1.0; torch 2.13.0, ..."


@dataclass
class Section(Generic[T]):
    """One part of the page: what it shows, what is not built yet, and inputs it had to skip."""

    items: list[T] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # producers in the recipe not built yet
    notes: list[str] = field(default_factory=list)  # unreadable inputs, skipped with a reason


@dataclass
class Report:
    recipe_name: str
    recipe_path: str
    workdir: str
    generated_at: str
    commit: str | None
    recbuild_version: str
    recall: Section[RecallCurves]
    training: Section[TrainingCurves]
    history: Section[MetricsHistory]
    embeddings: Section[NormHistogram]
    trees: Section[TreeBalance]
    graph: ArtifactGraph
    metrics: Section[MetricsTable]
    provenance: Section[Provenance] = field(default_factory=Section)
