"""Checks of what a tzrec step wrote, before recbuild publishes it, and the metrics it reports.

Each check raises BuildError naming the missing or unreadable file (tzrec exits 0 on some partial
outputs, e.g. predict over an empty input writes nothing). Nothing here unpickles or loads a model.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any, Sequence

from recbuild.errors import BuildError

EXPORT_FILES = ("scripted_model.pt", "pipeline.config", "fg.json", "model_acc.json")


def _json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BuildError(f"tzrec wrote no {path.name} in {what}") from None
    except ValueError as exc:
        raise BuildError(f"{what}/{path.name} is not JSON: {exc}") from None


def checkpoints(out: Path, expect_eval: bool) -> dict[str, Any]:
    """model.ckpt-N/{model,optimizer} folders, pipeline.config, and the eval file when there was eval data."""
    from recbuild.ml.exporter.selection import EVAL_FILE, read_eval_results
    from recbuild.tzrec.checkpoints import list_checkpoints

    found = list_checkpoints(out)
    if not found:
        raise BuildError("tzrec train_eval finished without a checkpoint (model.ckpt-<step>/model/)")
    for step, folder in found.items():
        if not (folder / "model" / ".metadata").is_file():
            raise BuildError(f"{folder.name}/model has no .metadata: the checkpoint is incomplete")
    if not (out / "pipeline.config").is_file():
        raise BuildError("tzrec train_eval wrote no pipeline.config into model_dir")
    results = read_eval_results(out)
    if expect_eval and not results:
        raise BuildError(f"tzrec train_eval had eval data but wrote no {EVAL_FILE}")
    return {"checkpoints": sorted(found), "final_step": max(found)}


def eval_metrics(path: Path) -> dict[str, Any]:
    """The last evaluation in a tzrec eval file (one JSON object per line): metrics + global_step."""
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()] if path.is_file() else []
    if not lines:
        raise BuildError(f"tzrec wrote no evaluation into {path.name}")
    try:
        record = json.loads(lines[-1])
    except ValueError as exc:
        raise BuildError(f"{path.name}: last line is not JSON ({exc})") from None
    return {k: v for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) or k == "global_step"}


def export(out: Path) -> dict[str, Any]:
    """Every folder with scripted_model.pt must hold tzrec's export files; returns the layout."""
    folders = sorted({p.parent for p in out.rglob("scripted_model.pt")})
    if not folders:
        raise BuildError("tzrec export wrote no scripted_model.pt")
    names = []
    for folder in folders:
        rel = folder.relative_to(out).as_posix() or "."
        for name in EXPORT_FILES:
            if not (folder / name).is_file():
                raise BuildError(f"tzrec export wrote no {name} in {rel}/")
        if not zipfile.is_zipfile(folder / "scripted_model.pt"):
            raise BuildError(f"{rel}/scripted_model.pt is not a TorchScript archive")
        fg = _json(folder / "fg.json", rel)
        if not isinstance(fg, dict) or not isinstance(fg.get("features"), list):
            raise BuildError(f"{rel}/fg.json has no features list")
        _json(folder / "model_acc.json", rel)
        names.append(rel)
    return {"exported": names}


def parquet_table(out: Path, columns: Sequence[str], rows: int | None, what: str) -> dict[str, Any]:
    """part-*.parquet readable, with ``columns``; ``rows`` (if given) rows in all."""
    import pyarrow.parquet as pq

    files = sorted(out.glob("*.parquet"))
    if not files:
        raise BuildError(f"tzrec {what} wrote no parquet file (an empty input writes nothing)")
    total = 0
    for path in files:
        try:
            meta = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError...
            raise BuildError(f"{path.name} written by tzrec {what} is not readable parquet: {exc}") from None
        missing = [c for c in columns if c not in meta.schema_arrow.names]
        if missing:
            raise BuildError(f"tzrec {what} output lacks column(s) {', '.join(missing)}; it has "
                             f"{', '.join(meta.schema_arrow.names)}")
        total += meta.metadata.num_rows
    if rows is not None and total != rows:
        raise BuildError(f"tzrec {what} wrote {total} rows for {rows} input rows")
    return {"rows": total, "files": [f.name for f in files]}


def faiss_index(out: Path) -> dict[str, Any]:
    """faiss_index + id_mapping agree; index_meta.json (read off the index) is added for recbuild's kinds."""
    from recbuild.retrieval import faiss_index as fi

    try:
        index, _ids = fi.load_index(out)
    except Exception as exc:
        raise BuildError(f"the index tzrec wrote does not load: {exc}") from None
    meta = fi.describe_index(index)
    fi.write_json(out / fi.META_FILE, meta)
    return meta


def hitrate(folder: Path) -> float:
    import pyarrow.parquet as pq

    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise BuildError("tzrec hitrate wrote no total hitrate table")
    table = pq.read_table(files[0])
    if "hitrate" not in table.column_names or table.num_rows != 1:
        raise BuildError(f"{files[0].name}: expected one row with column hitrate")
    value = table.column("hitrate")[0].as_py()
    if value is None or not math.isfinite(value):
        raise BuildError(f"tzrec hitrate is {value} (no ground truth items?)")
    return float(value)


def tree(out: Path) -> dict[str, Any]:
    """TorchEasyRec's tree files, parsed back and checked for agreement (recbuild's parser)."""
    import pyarrow.parquet as pq

    from recbuild.retrieval import tree_io

    try:
        parsed = tree_io.read_serving_tree(out / tree_io.SERVING_TREE)
        tables = tree_io.read_graph_tables(out)
        nodes = pq.ParquetFile(out / tree_io.NODE_FEATURE).metadata.num_rows
    except Exception as exc:
        raise BuildError(f"the tree tzrec wrote does not read back: {exc}") from None
    if nodes != len(parsed.codes) or len(tables.ids) != len(parsed.codes):
        raise BuildError(f"serving_tree has {len(parsed.codes)} nodes, node_table {len(tables.ids)}, "
                         f"node_feature {nodes}")
    return {"levels": parsed.num_levels, "n_cluster": parsed.k, "nodes": int(len(parsed.codes)),
            "items": int(parsed.leaf_mask.sum())}
