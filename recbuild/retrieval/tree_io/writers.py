"""Writing a tree in TorchEasyRec's files (recbuild/retrieval/tree_io/formats.py): serving_tree, the
node/edge text tables and node_feature, byte for byte as tzrec writes them.

Big tables are built as pyarrow string arrays and written from their data buffer: no per-row
Python formatting except for float attributes (Python's ``str(float)`` is tzrec's format).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recbuild.retrieval.embeddings_io import write_lines
from recbuild.retrieval.tdm_tree.codes import ancestor_codes, level_of
from recbuild.retrieval.tdm_tree.tree import TdmTree
from recbuild.retrieval.tree_io.formats import EDGE_TABLE, NODE_FEATURE, NODE_TABLE, PREDICT_EDGE_TABLE, SERVING_TREE
from recbuild.retrieval.tree_io.node_features import plain_array


def _strings(values) -> Any:
    """Node ids / values as a pyarrow large_string array, formatted as Python's str() would.

    large_string (64-bit offsets): the edge table of a 10M-item tree passes 2 GiB of text.
    """
    import pyarrow as pa

    if isinstance(values, np.ndarray) and values.dtype == object:
        return pa.array(values.tolist(), type=pa.large_string())
    if isinstance(values, np.ndarray):
        return pa.array(values).cast(pa.large_string())
    return values


def format_attr(column, null_text: str):
    """tzrec formats a scalar with str(); nulls become "" (attrs) or 0 (raw attrs)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return pc.fill_null(column.cast(pa.string()), null_text)
    if pa.types.is_integer(column.type):
        return pc.fill_null(column.cast(pa.string()), null_text)
    # floats, bools, ...: Python's str() (1.0 -> "1.0", float32 0.1 -> "0.10000000149011612")
    return pa.array([null_text if v is None else str(v) for v in column.to_pylist()], type=pa.string())


def _join(columns: Sequence[Any], separator: str):
    """Element-wise join of string arrays and literal strings (as large_string)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arrays = []
    for c in columns:
        if isinstance(c, (pa.Array, pa.ChunkedArray)):
            arrays.append(c if c.type == pa.large_string() else c.cast(pa.large_string()))
        else:
            arrays.append(pa.scalar(c, pa.large_string()))
    if len(arrays) == 1 and not isinstance(arrays[0], pa.Scalar):
        return arrays[0]
    return pc.binary_join_element_wise(*arrays, pa.scalar(separator, pa.large_string()))


def _write_lines(path: Path, header: str | None, lines) -> None:
    """Write string arrays as lines from their joined data buffers (no per-row Python work).

    ``lines``: one pyarrow string array, or an iterable of them (written in order, so a big table
    can be produced chunk by chunk with bounded memory).
    """
    import pyarrow as pa

    chunks = [lines] if isinstance(lines, (pa.Array, pa.ChunkedArray)) else lines
    with open(path, "wb") as fh:
        if header is not None:
            fh.write(header.encode("utf-8") + b"\n")
        for chunk in chunks:
            write_lines(fh, chunk)


# Nodes formatted at once: the text of a whole 20M-item tree would take gigabytes.
NODES_PER_CHUNK = 1 << 20


def _node_chunks(tree: TdmTree, first: int = 0):
    for lo in range(first, len(tree.codes), NODES_PER_CHUNK):
        yield lo, min(len(tree.codes), lo + NODES_PER_CHUNK)


def write_serving_tree(tree: TdmTree, path: Path) -> None:
    import pyarrow as pa

    def chunks():
        for lo, hi in _node_chunks(tree):
            yield _join([pa.array(tree.codes[lo:hi]).cast(pa.string()), _strings(tree.ids[lo:hi])], " ")

    _write_lines(path, f"{tree.num_levels} {tree.k}", chunks())


def write_node_table(tree: TdmTree, features, attr_columns: Sequence[str], raw_columns: Sequence[str],
                     path: Path, attr_delimiter: str = ",") -> None:
    import pyarrow as pa

    def feature_text(lo: int, hi: int):
        ids = _strings(tree.ids[lo:hi])
        parts = [pa.array(level_of(tree.codes[lo:hi], tree.k, tree.depth)).cast(pa.string()), ids]
        for names, null_text in ((attr_columns, ""), (raw_columns, "0")):
            if names:
                parts.append(_join([format_attr(plain_array(features.column(c).slice(lo, hi - lo)), null_text)
                                    for c in names], attr_delimiter))
        return ids, parts

    def chunks():
        for lo, hi in _node_chunks(tree):
            ids, parts = feature_text(lo, hi)
            if lo == 0:  # the "-1" row: the root's feature without its level
                root_parts = ["-1", ids.slice(0, 1)] + [part.slice(0, 1) for part in parts[2:]]
                yield _join(["-1", "1.0", _join(root_parts, ",")], "\t")
            yield _join([ids, "1.0", _join(parts, ",")], "\t")

    id_type = "string" if tree.hash_ids else "int64"
    _write_lines(path, f"id:{id_type}\tweight:float\tfeature:string", chunks())


def write_edge_table(tree: TdmTree, path: Path, leaves_per_chunk: int = 1 << 16) -> None:
    """Leaf -> ancestors, parent first, root excluded; leaves in level order. Written in chunks of
    leaves: the table has (levels - 2) rows per leaf, 19M rows for 1M items (a chunk of 64k leaves
    is about 1.5M rows, 0.2 GB of text and indexes)."""
    import pyarrow as pa

    leaves = np.flatnonzero(tree.leaf_mask)

    def chunks():
        for lo in range(0, len(leaves), leaves_per_chunk):
            part = leaves[lo:lo + leaves_per_chunk]
            anc = ancestor_codes(tree.codes[part], tree.k, tree.depth)[:, : tree.depth - 1]  # no root
            if not anc.size:
                continue
            src = _strings(tree.ids[part]).take(pa.array(np.repeat(np.arange(len(part)), anc.shape[1])))
            dst = _strings(tree.ids[tree.index_of_codes(anc.reshape(-1))])
            yield _join([src, dst, "1.0"], "\t")

    _write_lines(path, _edge_header(tree), chunks())


def write_predict_edge_table(tree: TdmTree, path: Path) -> None:
    """"-1 -> root", then parent -> child for every node in code order (= parents in level order,
    children in code order, since the parent code (c-1)//k never decreases)."""

    def chunks():
        yield _join(["-1", _strings(tree.ids[:1]), "1.0"], "\t")
        for lo, hi in _node_chunks(tree, first=1):
            parent = tree.index_of_codes((tree.codes[lo:hi] - 1) // tree.k)
            yield _join([_strings(tree.ids[parent]), _strings(tree.ids[lo:hi]), "1.0"], "\t")

    _write_lines(path, _edge_header(tree), chunks())


def _edge_header(tree: TdmTree) -> str:
    id_type = "string" if tree.hash_ids else "int64"
    return f"src_id:{id_type}\tdst_id:{id_type}\tweight:float"


def write_node_feature(features, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(str(path), features.schema, use_dictionary=False, compression="snappy",
                          write_statistics=True) as writer:
        writer.write_table(features, row_group_size=1 << 20)


def write_all(tree: TdmTree, features, attr_columns, raw_columns, out_dir: Path,
              attr_delimiter: str = ",") -> None:
    out_dir = Path(out_dir)
    write_serving_tree(tree, out_dir / SERVING_TREE)
    write_node_table(tree, features, attr_columns, raw_columns, out_dir / NODE_TABLE, attr_delimiter)
    write_edge_table(tree, out_dir / EDGE_TABLE)
    write_predict_edge_table(tree, out_dir / PREDICT_EDGE_TABLE)
    write_node_feature(features, out_dir / NODE_FEATURE)
