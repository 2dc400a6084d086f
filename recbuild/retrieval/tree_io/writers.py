"""Writing a tree in TorchEasyRec's files (recbuild/retrieval/tree_io/formats.py): serving_tree, the
node/edge text tables and node_feature, byte for byte as tzrec writes them.

Every writer walks the tree from its leaves (``TreeLeaves``), level by level in code order, a chunk
of nodes at a time: the whole tree is never in memory, only the leaves' codes and ids (16 bytes an
item). Chunks are pyarrow string arrays written from their data buffer: no per-row Python
formatting except for float attributes (Python's ``str(float)`` is tzrec's format) and hash-mode ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recbuild.retrieval.embeddings_io import write_lines
from recbuild.retrieval.tdm_tree.leaves import TreeLeaves
from recbuild.retrieval.tdm_tree.tree import TdmTree
from recbuild.retrieval.tree_io.formats import EDGE_TABLE, NODE_FEATURE, NODE_TABLE, PREDICT_EDGE_TABLE, SERVING_TREE
from recbuild.retrieval.tree_io.node_features import plain_array


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


# node_feature's row groups (as one write_table(row_group_size=...) of the whole table would cut them).
ROWS_PER_GROUP = 1 << 20


def write_serving_tree(tree: TreeLeaves | TdmTree, path: Path) -> None:
    import pyarrow as pa

    leaves = TreeLeaves.of_tree(tree)

    def chunks():
        for level, codes, first in leaves.node_chunks():
            yield _join([pa.array(codes).cast(pa.string()), leaves.ids_of(level, codes, first)], " ")

    _write_lines(path, f"{leaves.num_levels} {leaves.k}", chunks())


def write_node_table(tree: TreeLeaves | TdmTree, features, attr_columns: Sequence[str],
                     raw_columns: Sequence[str], path: Path, attr_delimiter: str = ",") -> None:
    """``features``: the node_feature table (every node, in node order) when there are attribute
    columns; None otherwise."""
    import pyarrow as pa

    leaves = TreeLeaves.of_tree(tree)

    def chunks():
        at = 0  # index of the chunk's first node in level order (= its row in ``features``)
        for level, codes, first in leaves.node_chunks():
            ids = leaves.ids_of(level, codes, first)
            parts = [pa.array(np.full(len(codes), level, dtype=np.int64)).cast(pa.string()), ids]
            for names, null_text in ((attr_columns, ""), (raw_columns, "0")):
                if names:
                    parts.append(_join([format_attr(plain_array(features.column(c).slice(at, len(codes))),
                                                    null_text) for c in names], attr_delimiter))
            if at == 0:  # the "-1" row: the root's feature without its level
                root_parts = ["-1", ids.slice(0, 1)] + [part.slice(0, 1) for part in parts[2:]]
                yield _join(["-1", "1.0", _join(root_parts, ",")], "\t")
            yield _join([ids, "1.0", _join(parts, ",")], "\t")
            at += len(codes)

    id_type = "string" if leaves.hash_ids else "int64"
    _write_lines(path, f"id:{id_type}\tweight:float\tfeature:string", chunks())


def write_edge_table(tree: TreeLeaves | TdmTree, path: Path, leaves_per_chunk: int = 1 << 16) -> None:
    """Leaf -> ancestors, parent first, root excluded; leaves in level order. Written in chunks of
    leaves: the table has (levels - 2) rows per leaf, 19M rows for 1M items (a chunk of 64k leaves
    is about 1.5M rows, 0.2 GB of text and indexes)."""
    import pyarrow as pa

    leaves = TreeLeaves.of_tree(tree)
    above = list(range(leaves.depth - 1, 0, -1))  # parent first, root excluded

    def chunks():
        if not above:
            return
        for lo in range(0, leaves.n_items, leaves_per_chunk):
            part = leaves.codes[lo:lo + leaves_per_chunk]
            anc = np.stack([leaves.ancestors(part, level) for level in above], axis=1)
            src = leaves.leaf_ids(lo, lo + len(part)).take(pa.array(np.repeat(np.arange(len(part)), len(above))))
            yield _join([src, leaves.internal_ids(anc.reshape(-1)), "1.0"], "\t")

    _write_lines(path, _edge_header(leaves), chunks())


def write_predict_edge_table(tree: TreeLeaves | TdmTree, path: Path) -> None:
    """"-1 -> root", then parent -> child for every node in code order (= parents in level order,
    children in code order, since the parent code (c-1)//k never decreases)."""
    leaves = TreeLeaves.of_tree(tree)

    def chunks():
        yield _join(["-1", leaves.internal_ids(np.zeros(1, dtype=np.int64)), "1.0"], "\t")
        for level, codes, first in leaves.node_chunks(first_level=1):
            parents = leaves.internal_ids((codes - 1) // leaves.k)
            yield _join([parents, leaves.ids_of(level, codes, first), "1.0"], "\t")

    _write_lines(path, _edge_header(leaves), chunks())


def _edge_header(leaves: TreeLeaves) -> str:
    id_type = "string" if leaves.hash_ids else "int64"
    return f"src_id:{id_type}\tdst_id:{id_type}\tweight:float"


def write_node_feature(features, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(str(path), features.schema, use_dictionary=False, compression="snappy",
                          write_statistics=True) as writer:
        writer.write_table(features, row_group_size=ROWS_PER_GROUP)


def write_node_ids(tree: TreeLeaves | TdmTree, id_column: str, path: Path) -> None:
    """node_feature without attribute columns: every node's id, streamed in the row groups
    ``write_node_feature`` would write (the same bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    leaves = TreeLeaves.of_tree(tree)
    id_type = pa.string() if leaves.hash_ids else pa.int64()
    schema = pa.schema([pa.field(id_column, id_type)])

    def id_chunks():
        for level, codes, first in leaves.node_chunks():
            if leaves.hash_ids:
                yield leaves.ids_of(level, codes, first).cast(pa.string())
            else:
                yield pa.array(leaves.int_ids_of(level, codes, first), type=pa.int64())

    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(str(path), schema, use_dictionary=False, compression="snappy",
                          write_statistics=True) as writer:
        held, rows = [], 0
        for chunk in id_chunks():
            held.append(chunk)
            rows += len(chunk)
            while rows >= ROWS_PER_GROUP:
                group = pa.concat_arrays(held)
                writer.write_table(pa.table([group.slice(0, ROWS_PER_GROUP)], schema=schema),
                                   row_group_size=ROWS_PER_GROUP)
                rest = group.slice(ROWS_PER_GROUP)
                held, rows = ([rest] if len(rest) else []), len(rest)
        if rows:
            writer.write_table(pa.table([pa.concat_arrays(held)], schema=schema), row_group_size=ROWS_PER_GROUP)


def write_tree(tree: TreeLeaves, leaf_codes, leaf_table, id_column: str, attr_columns, raw_columns,
               out_dir: Path, attr_delimiter: str = ",") -> None:
    """Every file of a tree. With attribute columns, the node_feature table (modes and means of every
    node) is built in memory first (``node_features``: ``leaf_table`` rows aligned with
    ``leaf_codes``); without, nothing beyond the leaves is ever held."""
    out_dir = Path(out_dir)
    features = None
    if attr_columns or raw_columns:
        from recbuild.retrieval.tree_io.node_features import node_features

        features = node_features(tree.to_tdm_tree(), np.asarray(leaf_codes), leaf_table, id_column,
                                 attr_columns, raw_columns)
    write_serving_tree(tree, out_dir / SERVING_TREE)
    write_node_table(tree, features, attr_columns, raw_columns, out_dir / NODE_TABLE, attr_delimiter)
    write_edge_table(tree, out_dir / EDGE_TABLE)
    write_predict_edge_table(tree, out_dir / PREDICT_EDGE_TABLE)
    if features is not None:
        write_node_feature(features, out_dir / NODE_FEATURE)
    else:
        write_node_ids(tree, id_column, out_dir / NODE_FEATURE)
