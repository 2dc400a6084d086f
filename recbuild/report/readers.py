"""Tolerant readers for the files the report draws from, each bounded in memory.

Every reader raises ``ReportInputError`` with a one-line reason when a file cannot be used; the
collector turns that into a note on the page instead of failing the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

EVAL_FILE = "train_eval_result_v2.txt"  # recbuild.ml.training.checkpoints.EVAL_FILE, without importing torch
SERVING_TREE = "serving_tree"  # recbuild.retrieval.tree_io.SERVING_TREE
EMBEDDING_SUFFIXES = ("_emb", "_embedding")
PREFERRED_EMBEDDING_COLUMNS = ("item_tower_emb", "user_tower_emb")


class ReportInputError(Exception):
    """A file the report wanted to read is unusable; the message says why, in one line."""


# -- evaluation curves -------------------------------------------------------------------------
@dataclass
class EvalResults:
    by_step: dict[int, dict[str, float]]  # later lines for a step win, as the exporter reads them
    skipped_lines: int


def read_eval_results(path: Path) -> EvalResults:
    """``train_eval_result_v2.txt``: one JSON object per evaluation with an integer ``global_step``.
    Lines that are not such an object are skipped and counted (the exporter refuses them; a report
    only shows what it can)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ReportInputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    by_step: dict[int, dict[str, float]] = {}
    skipped = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = record.pop("global_step")
            if isinstance(step, bool) or not isinstance(step, (int, float)) or step != int(step):
                raise ValueError("global_step is not an integer")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError):
            skipped += 1
            continue
        by_step[int(step)] = {name: float(value) for name, value in record.items()
                              if is_number(value)}
    return EvalResults(by_step, skipped)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- embedding norms ---------------------------------------------------------------------------
def embedding_columns(schema) -> list[str]:
    """Columns of a parquet schema that hold embeddings: the towers' output names first, then any
    ``*_emb`` / ``*_embedding`` column of a list or string type (TorchEasyRec, EasyRec)."""
    import pyarrow as pa

    def vector_like(name: str) -> bool:
        t = schema.field(name).type
        return (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)
                or pa.types.is_string(t) or pa.types.is_large_string(t))

    names = [n for n in PREFERRED_EMBEDDING_COLUMNS if n in schema.names and vector_like(n)]
    names += [n for n in schema.names if n not in names and n.endswith(EMBEDDING_SUFFIXES) and vector_like(n)]
    return names


@dataclass
class NormSample:
    norms: np.ndarray  # float64, one per sampled row
    dim: int
    total_rows: int
    row_groups_read: int


def sample_norms(files: list[str], column: str, budget: int = 200_000,
                 batch_rows: int = 8192) -> NormSample:
    """L2 norms of at most about ``budget`` rows of ``column``: the first rows of row groups spread
    evenly over the table (every file's footer is read; only the chosen row groups' data is). A
    100M-row table costs the same as a 200k-row one."""
    import pyarrow.parquet as pq

    from recbuild.errors import InputError
    from recbuild.retrieval.embeddings_io import embedding_matrix

    opened: dict[str, Any] = {}
    groups: list[tuple[str, int, int]] = []  # (file, row group, rows)
    try:
        for path in files:
            handle = pq.ParquetFile(path)
            opened[path] = handle
            meta = handle.metadata
            groups += [(path, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ReportInputError(f"{column}: a parquet file cannot be read ({short_reason(exc)})") from None
    groups = [g for g in groups if g[2] > 0]
    total = sum(rows for _, _, rows in groups)
    if not total:
        raise ReportInputError(f"{column}: the table has no rows")
    if total <= budget:
        chosen, quota = groups, max(rows for _, _, rows in groups)
    else:
        average = total / len(groups)
        count = min(len(groups), max(64, math.ceil(budget / average)))
        picks = np.unique(np.linspace(0, len(groups) - 1, count).round().astype(int))
        chosen, quota = [groups[i] for i in picks], max(1, budget // len(picks))
    parts, dim = [], None
    for path, group, _ in chosen:
        taken = 0
        try:
            for batch in opened[path].iter_batches(batch_size=min(batch_rows, quota), row_groups=[group],
                                                   columns=[column]):
                batch = batch.slice(0, quota - taken)
                vectors = embedding_matrix(batch.column(0), f"{Path(path).name}, {column}", dim=dim)
                dim = vectors.shape[1]
                parts.append(np.linalg.norm(vectors.astype(np.float64), axis=1))
                taken += batch.num_rows
                if taken >= quota:
                    break
        except InputError as exc:
            raise ReportInputError(exc.message) from None
        except (OSError, ValueError) as exc:
            raise ReportInputError(f"{Path(path).name}, {column}: cannot be read ({short_reason(exc)})") from None
    return NormSample(np.concatenate(parts), int(dim or 0), total, len(chosen))


def histogram(values: np.ndarray, bins: int = 41) -> tuple[list[float], list[int]]:
    """(edges, counts). Norms that agree to float32 rounding (L2-normalised towers) are one value:
    they get a window of +-1% around it, so the plot shows a spike, not the rounding noise (an odd
    number of bins puts that value mid-bin)."""
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-5 * max(1.0, abs(high)):
        centre = (low + high) / 2
        pad = max(1e-3, 0.01 * abs(centre))
        low, high = centre - pad, centre + pad
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    return edges.tolist(), counts.astype(int).tolist()


# -- TDM tree balance --------------------------------------------------------------------------
@dataclass
class LevelStats:
    k: int
    nodes: list[int]  # per level, root first
    leaves_min: list[int]
    leaves_max: list[int]
    leaves_mean: list[float]
    leaves: int


class _RunningRuns:
    """Leaves under each node of one level, streamed: ancestors of ascending leaf codes are
    non-decreasing, so a node's leaves are one run that may continue into the next chunk."""

    def __init__(self) -> None:
        self.key: int | None = None
        self.count = 0
        self.minimum: int | None = None
        self.maximum = 0
        self.nodes = 0
        self.total = 0

    def _close(self, count: int) -> None:
        self.minimum = count if self.minimum is None else min(self.minimum, count)
        self.maximum = max(self.maximum, count)
        self.nodes += 1
        self.total += count

    def add(self, ancestors: np.ndarray) -> None:
        if not len(ancestors):
            return
        starts = np.r_[0, np.flatnonzero(np.diff(ancestors)) + 1]
        counts = np.diff(np.r_[starts, len(ancestors)])
        keys = ancestors[starts]
        if self.key is not None and keys[0] == self.key:
            counts[0] += self.count
        elif self.key is not None:
            self._close(self.count)
        if len(counts) > 1:
            self.minimum = int(counts[:-1].min()) if self.minimum is None else min(self.minimum, int(counts[:-1].min()))
            self.maximum = max(self.maximum, int(counts[:-1].max()))
            self.nodes += len(counts) - 1
            self.total += int(counts[:-1].sum())
        self.key, self.count = int(keys[-1]), int(counts[-1])

    def finish(self) -> None:
        if self.key is not None:
            self._close(self.count)
            self.key = None


def tree_levels(path: Path, block_bytes: int = 16 << 20) -> LevelStats:
    """Nodes per level and leaves under each node per level of a ``serving_tree`` file
    (``"<levels> <k>"`` then ``"<code> <id>"`` per node, codes ascending), read in blocks.

    Leaves are the nodes of the deepest level (recbuild's trees keep every leaf there)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as csv

    from recbuild.retrieval.tdm_tree import first_code

    try:
        with open(path, "rb") as handle:
            header = handle.readline().split()
        num_levels, k = int(header[0]), int(header[1])
    except OSError as exc:
        raise ReportInputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except (ValueError, IndexError):
        raise ReportInputError(f"{path}: not a serving_tree (the first line is not \"<levels> <k>\")") from None
    if num_levels < 1 or k < 2 or num_levels > 64:
        raise ReportInputError(f"{path}: not a serving_tree ({num_levels} levels, k={k})")
    depth = num_levels - 1
    starts = np.array([first_code(level, k) for level in range(depth + 2)], dtype=object)
    if starts[-1] > np.iinfo(np.int64).max:
        raise ReportInputError(f"{path}: codes of {num_levels} levels with k={k} exceed int64")
    starts = starts.astype(np.int64)
    reader = csv.open_csv(
        path,
        read_options=csv.ReadOptions(skip_rows=1, column_names=["line"], block_size=block_bytes),
        # one column holding the whole line: ids may be any text; the code is its first word
        parse_options=csv.ParseOptions(delimiter="\x1f", quote_char=False, escape_char=False,
                                       double_quote=False),
        convert_options=csv.ConvertOptions(column_types={"line": pa.string()}))
    nodes = np.zeros(depth + 1, dtype=np.int64)
    runs = [_RunningRuns() for _ in range(depth + 1)]
    last = -1
    try:
        for batch in reader:
            words = pc.split_pattern(batch.column(0), " ", max_splits=1)
            codes = pc.cast(pc.list_element(words, 0), pa.int64()).to_numpy(zero_copy_only=False)
            if not len(codes):
                continue
            if codes[0] <= last or np.any(np.diff(codes) <= 0):
                raise ReportInputError(f"{path}: node codes do not ascend; not a serving_tree")
            last = int(codes[-1])
            level = np.searchsorted(starts, codes, side="right") - 1
            if level[-1] > depth:
                raise ReportInputError(f"{path}: a code lies below level {depth}")
            nodes += np.bincount(level, minlength=depth + 1)[: depth + 1]
            ancestors = codes[level == depth]
            for lvl in range(depth, -1, -1):
                runs[lvl].add(ancestors)
                ancestors = (ancestors - 1) // k
    except (pa.ArrowInvalid, ValueError) as exc:
        raise ReportInputError(f"{path}: not a serving_tree ({short_reason(exc)})") from None
    if last < 0:
        raise ReportInputError(f"{path}: no nodes")
    for run in runs:
        run.finish()
    return LevelStats(k=k, nodes=nodes.tolist(),
                      leaves_min=[r.minimum or 0 for r in runs], leaves_max=[r.maximum for r in runs],
                      leaves_mean=[r.total / r.nodes if r.nodes else 0.0 for r in runs],
                      leaves=int(nodes[depth]))


def short_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
