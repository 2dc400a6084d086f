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
from recbuild.retrieval.tdm_tree.codes import ancestor_codes
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


def write_serving_tree(tree: TdmTree, path: Path) -> None:
    import pyarrow as pa

    lines = _join([pa.array(tree.codes).cast(pa.string()), _strings(tree.ids)], " ")
    _write_lines(path, f"{tree.num_levels} {tree.k}", lines)


def write_node_table(tree: TdmTree, features, attr_columns: Sequence[str], raw_columns: Sequence[str],
                     path: Path, attr_delimiter: str = ",") -> None:
    import pyarrow as pa

    ids = _strings(tree.ids)
    parts = [pa.array(tree.levels).cast(pa.string()), ids]
    root_parts = ["-1", ids.slice(0, 1)]
    for names, null_text in ((attr_columns, ""), (raw_columns, "0")):
        if not names:
            continue
        joined = _join([format_attr(plain_array(features.column(c)), null_text) for c in names],
                       attr_delimiter)
        parts.append(joined)
        root_parts.append(joined.slice(0, 1))
    feature = _join(parts, ",")
    root_feature = _join(root_parts, ",")
    body = _join([ids, "1.0", feature], "\t")
    root_row = _join(["-1", "1.0", root_feature], "\t")
    id_type = "string" if tree.hash_ids else "int64"
    _write_lines(path, f"id:{id_type}\tweight:float\tfeature:string",
                 pa.concat_arrays([root_row, body]))


def write_edge_table(tree: TdmTree, path: Path, leaves_per_chunk: int = 1 << 18) -> None:
    """Leaf -> ancestors, parent first, root excluded; leaves in level order. Written in chunks of
    leaves: the table has (levels - 2) rows per leaf, 19M rows for 1M items."""
    import pyarrow as pa

    leaves = np.flatnonzero(tree.leaf_mask)
    ids = _strings(tree.ids)

    def chunks():
        for lo in range(0, len(leaves), leaves_per_chunk):
            part = leaves[lo:lo + leaves_per_chunk]
            anc = ancestor_codes(tree.codes[part], tree.k, tree.depth)[:, : tree.depth - 1]  # no root
            if not anc.size:
                continue
            src = np.repeat(part, anc.shape[1])
            dst = tree.index_of_codes(anc.reshape(-1))
            yield _join([ids.take(pa.array(src)), ids.take(pa.array(dst)), "1.0"], "\t")

    _write_lines(path, _edge_header(tree), chunks())


def write_predict_edge_table(tree: TdmTree, path: Path) -> None:
    """"-1 -> root", then parent -> child for every node in code order (= parents in level order,
    children in code order, since the parent code (c-1)//k never decreases)."""
    import pyarrow as pa

    ids = _strings(tree.ids)
    parent = tree.parent_index()[1:]
    lines = _join([ids.take(pa.array(parent)), ids.slice(1), "1.0"], "\t")
    root = _join(["-1", ids.slice(0, 1), "1.0"], "\t")
    _write_lines(path, _edge_header(tree), pa.concat_arrays([root, lines]))


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
