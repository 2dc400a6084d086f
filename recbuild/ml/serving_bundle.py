"""The serving bundle: assemble one deployable folder, and answer a query from it alone.

Layout (TorchEasyRec's where it has one, tzrec_formats.md sections 1.1 and 7):
  model/               the exported model (+ serving_tree, as tzrec ships it via --asset_files)
  user/                the user tower + faiss_index + id_mapping (+ index_meta.json)
  item/                the item tower
  tree/                serving_tree and node_feature/ (for the feature store)
  serving_config.json  faiss_nprobe, faiss_neigh_num, tdm_retrieval_num, outputs (+ faiss_ef_search)

:func:`serve_check` reads nothing outside the bundle: if it answers, the folder is complete.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from recbuild.errors import InputError
from recbuild.retrieval.faiss_index import read_json, write_json

CONFIG_FILE = "serving_config.json"
INDEX_FILES = ("faiss_index", "id_mapping", "index_meta.json")
TREE_FILES = ("serving_tree", "node_feature/part-0.parquet")
SKIP = {"MANIFEST.json"}  # the upstream's manifest; the engine writes the bundle's own


def export_layout(folder: Path) -> str:
    """"towers" (user/ + item/ exported towers, TorchEasyRec's match-model export), "tdm" (model/ +
    embedding/, TorchEasyRec's TDM export) or "flat" (the model files at the top)."""
    folder = Path(folder)
    if not (folder / "scripted_model.pt").is_file() and not (folder / "model.pt2").is_file():
        if (folder / "user" / "scripted_model.pt").is_file() and (folder / "item" / "scripted_model.pt").is_file():
            return "towers"
        if (folder / "model" / "scripted_model.pt").is_file() and (folder / "embedding").is_dir():
            return "tdm"
    return "flat"


def copy_tree(source: Path, target: Path, skip: Iterable[str] = SKIP) -> list[str]:
    """Copy every file under ``source`` into ``target`` (content only, sorted); returns relpaths."""
    source, target = Path(source), Path(target)
    skip = set(skip)
    copied = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        rel = path.relative_to(source).as_posix()
        if rel in skip:
            continue
        destination = target / rel
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)
        copied.append(rel)
    return copied


def copy_files(source: Path, names: Iterable[str], target: Path, what: str) -> None:
    for name in names:
        path = Path(source) / name
        if not path.is_file():
            raise InputError(f"{what}: {path} is missing; rebuild it")
        destination = Path(target) / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)


def write_config(bundle: Path, config: dict[str, Any]) -> None:
    write_json(Path(bundle) / CONFIG_FILE, config)


def read_config(bundle: Path) -> dict[str, Any]:
    config = read_json(Path(bundle) / CONFIG_FILE, "not a serving bundle")
    if not isinstance(config, dict):
        raise InputError(f"{Path(bundle) / CONFIG_FILE} is not a JSON object; rebuild the bundle")
    for key in ("faiss_nprobe", "faiss_neigh_num", "faiss_ef_search", "tdm_retrieval_num"):
        value = config.get(key)
        if value is not None and (type(value) is not int or value < 1):
            raise InputError(f"{Path(bundle) / CONFIG_FILE}: {key} must be a positive integer or null, "
                             f"got {value!r}; rebuild the bundle")
    return config


def serve_check(bundle_dir: str | Path, query_row: dict[str, Any], k: int | None = None) -> list[str]:
    """Answer one query end to end from the bundle alone: user tower -> faiss -> item ids.

    ``query_row`` maps the user tower's input columns (see ``user/fg.json``) to values, e.g.
    ``{"user_id": 42, "age": 31.0, "click_seq": [3, 17]}``. Returns up to ``k`` (default the
    bundle's ``faiss_neigh_num``) item ids, best first, as written in ``id_mapping``.
    """
    import pyarrow as pa
    import torch

    from recbuild.ml import feature_io, predictor
    from recbuild.retrieval import faiss_index as fi

    bundle = Path(bundle_dir)
    config = read_config(bundle)
    user = bundle / "user"
    if not (user / "faiss_index").is_file():
        raise InputError(f"{bundle}: no user/faiss_index; the bundle was built without towers + index")
    # files first: no model is loaded for a broken bundle; the index is mapped, not read (a 20M-item
    # index answers one query without loading its lists)
    index, ids = fi.load_index(user, mmap=True)
    tower = predictor.load_tower(user)
    missing = [s.column for s in tower.specs if s.column not in query_row]
    if missing:
        raise InputError(f"the query lacks {', '.join(map(repr, missing))}; the user tower reads "
                         f"{', '.join(s.column for s in tower.specs)}")
    batch = pa.RecordBatch.from_pylist([{s.column: query_row[s.column] for s in tower.specs}])
    with torch.inference_mode():
        out = tower.module(feature_io.batch_to_inputs(batch, tower.specs))
    if "user_tower_emb" not in out:
        raise InputError(f"{user}: the tower returned {sorted(out)}, not user_tower_emb")
    vector = out["user_tower_emb"].detach().cpu().numpy().astype(np.float32).reshape(1, -1)
    top = int(k or config.get("faiss_neigh_num") or 200)
    _, found = fi.search(index, vector, min(top, index.ntotal), nprobe=config.get("faiss_nprobe"),
                         ef_search=config.get("faiss_ef_search"))
    return [str(ids[i]) for i in found[0] if i >= 0]
