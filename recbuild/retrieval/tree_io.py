"""TorchEasyRec's TDM tree files: writers and a parser that reads them back.

Formats (tzrec_formats.md section 2.5, tzrec's ``tree_search_util.py``), level order = ascending code:

  serving_tree            "<levels> <k>" then "<code> <id>" per node
  node_table.txt          "id:int64\\tweight:float\\tfeature:string" header (id:string in hash mode),
                          a "-1" row pointing at the root, then per node
                          "<id>\\t1.0\\t<level>,<id>[,<attrs joined by delimiter>][,<raw attrs>]"
  edge_table.txt          leaf -> each ancestor from the parent up to (not including) the root
  predict_edge_table.txt  "-1 -> root", then parent -> child for every non-root node
  node_feature/part-0.parquet  [item_id, *attrs, *raw attrs], one row per node, internal nodes
                               holding the mode (attrs) / mean (raw attrs) of their leaves

Big tables are built as pyarrow string arrays and written from their data buffer: no per-row
Python formatting except for float attributes (Python's ``str(float)`` is tzrec's format).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recbuild.errors import InputError
from recbuild.retrieval.embeddings_io import write_lines
from recbuild.retrieval.tdm_tree import TdmTree, ancestor_codes, first_code

SERVING_TREE = "serving_tree"
NODE_TABLE = "node_table.txt"
EDGE_TABLE = "edge_table.txt"
PREDICT_EDGE_TABLE = "predict_edge_table.txt"
NODE_FEATURE = "node_feature/part-0.parquet"


# -- node features -----------------------------------------------------------------------------
def node_features(tree: TdmTree, leaf_codes: np.ndarray, leaf_table, id_column: str,
                  attr_columns: Sequence[str], raw_columns: Sequence[str]):
    """The node_feature table: one row per node in level order.

    ``leaf_table`` holds the attr/raw columns of the items in *enumeration order* (the order in
    which tzrec would meet them: sorted order for init trees, row order for learnt trees), aligned
    with ``leaf_codes``. Internal nodes get, per attr column, the most common value among their
    leaves (strings: non-empty values, ties to the first met; numbers: ties to the smallest) and,
    per raw column, the mean (rounded half to even for integer columns).
    """
    import pyarrow as pa

    n_internal = int((~tree.leaf_mask).sum())
    leaf_position = np.searchsorted(tree.codes[n_internal:], leaf_codes)  # leaf row -> node order
    by_code = np.empty(len(leaf_codes), dtype=np.int64)
    by_code[leaf_position] = np.arange(len(leaf_codes))
    groups = _internal_groups(tree, leaf_codes, n_internal)
    id_type = pa.string() if tree.hash_ids else pa.int64()
    columns = {id_column: pa.array(tree.ids.tolist(), type=id_type)}
    for name in attr_columns:
        column = _combine(leaf_table.column(name))
        internal = _group_mode(column, groups, n_internal)
        columns[name] = pa.concat_arrays([internal, column.take(pa.array(by_code))])
    for name in raw_columns:
        column = _combine(leaf_table.column(name))
        internal = _group_mean(column, groups, n_internal)
        columns[name] = pa.concat_arrays([internal, column.take(pa.array(by_code))])
    return pa.table(columns)


def _combine(column):
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column


def _internal_groups(tree: TdmTree, leaf_codes: np.ndarray, n_internal: int):
    """For each level, (leaf row -> internal node index) pairs, i.e. every (leaf, ancestor)."""
    anc = ancestor_codes(leaf_codes, tree.k, tree.depth)  # [n, depth]
    node_index = np.searchsorted(tree.codes[:n_internal], anc)
    leaf_rows = np.repeat(np.arange(len(leaf_codes)), tree.depth)
    return leaf_rows, node_index.reshape(-1)


def _group_mode(column, groups, n_nodes: int):
    import pyarrow as pa
    import pyarrow.compute as pc

    leaf_rows, nodes = groups
    is_string = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    if is_string:
        valid &= pc.fill_null(pc.not_equal(column, ""), False).to_numpy(zero_copy_only=False)
        encoded = pc.dictionary_encode(column)
        categories = encoded.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        dictionary = encoded.dictionary
    else:
        values = column.fill_null(0).to_numpy(zero_copy_only=False)
        dictionary_np, categories = np.unique(values, return_inverse=True)  # sorted: ties -> smallest
        dictionary = pa.array(dictionary_np, type=column.type)
    keep = valid[leaf_rows]
    rows, node = leaf_rows[keep], nodes[keep]
    n_cat = max(len(dictionary), 1)
    key = node * n_cat + categories[rows]
    # First occurrence in enumeration order (leaf row order) breaks string ties.
    order = np.lexsort((rows, key))
    key_sorted = key[order]
    starts = np.flatnonzero(np.r_[True, key_sorted[1:] != key_sorted[:-1]])
    unique_keys = key_sorted[starts]
    counts = np.diff(np.r_[starts, len(key_sorted)])
    first_row = rows[order][starts]
    group_node = unique_keys // n_cat
    group_cat = unique_keys % n_cat
    tiebreak = first_row if is_string else group_cat
    best = np.lexsort((tiebreak, -counts, group_node))
    best_node = group_node[best]
    winner = best[np.r_[True, best_node[1:] != best_node[:-1]]] if len(best) else best
    result_cat = np.full(n_nodes, -1, dtype=np.int64)
    result_cat[group_node[winner]] = group_cat[winner]
    taken = dictionary.take(pa.array(np.maximum(result_cat, 0))) if len(dictionary) else \
        pa.nulls(n_nodes, column.type)
    if is_string:
        return pc.if_else(pa.array(result_cat >= 0), taken, pa.scalar("", column.type))
    return pc.if_else(pa.array(result_cat >= 0), taken, pa.scalar(None, column.type))


def _group_mean(column, groups, n_nodes: int):
    import pyarrow as pa
    import pyarrow.compute as pc

    leaf_rows, nodes = groups
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise InputError(f"raw attribute column of type {column.type} must be numeric")
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    values = column.cast(pa.float64()).fill_null(0).to_numpy(zero_copy_only=False)
    mean, counts = arrow_group_means(values, valid, leaf_rows, nodes, n_nodes)
    if pa.types.is_integer(column.type):
        mean = np.rint(mean)  # half to even, like pyarrow.compute.round's default
    out = pa.array(mean, type=pa.float64()).cast(column.type, safe=False)
    return pc.if_else(pa.array(counts > 0), out, pa.scalar(None, column.type))


ARROW_SUM_BLOCK = 16


def arrow_group_means(values: np.ndarray, valid: np.ndarray, rows: np.ndarray, groups: np.ndarray,
                      n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group, ``pyarrow.compute.mean`` of ``values[rows]`` in ascending row order, to the last bit.

    tzrec's tree builder takes each internal node's raw attribute as ``pc.mean`` over its leaves in
    the order it met them; a plain sum differs in the last digits (51.986666666666665 vs
    51.98666666666668). Arrow sums doubles (integers converted to double) by pairwise summation:
    runs of valid values are cut into blocks of 16, each summed in order from 0.0, and the block sums
    are combined by a binary counter (a perfect binary tree per power-of-two group of blocks, then
    the leftover groups folded from the smallest); the mean is that sum / count. This reproduces it
    for every group at once. Returns (means, counts); a group without valid values has mean 0.
    """
    order = np.lexsort((rows, groups))
    g = groups[order]
    ok = valid[rows[order]]
    v = values[rows[order]].astype(np.float64, copy=False)
    n = len(order)
    counts = np.bincount(g[ok], minlength=n_groups)
    if n == 0:
        return np.zeros(n_groups), counts
    index = np.arange(n)
    # A run of valid values starts at a valid value whose predecessor is invalid or in another group.
    starts = ok & np.r_[True, (g[1:] != g[:-1]) | ~ok[:-1]]
    run_start = np.maximum.accumulate(np.where(starts, index, 0))
    position = index - run_start
    g, v, position = g[ok], v[ok], position[ok]
    block_start = position % ARROW_SUM_BLOCK == 0
    block = np.cumsum(block_start) - 1
    n_blocks = int(block[-1]) + 1 if len(block) else 0
    column = position % ARROW_SUM_BLOCK
    sums = np.zeros(n_blocks)
    for j in range(ARROW_SUM_BLOCK):  # in order inside each block, from 0.0
        take = column == j
        sums[block[take]] = sums[block[take]] + v[take]
    owner = g[block_start]  # group of each block, blocks in order
    # binary counter over each group's blocks: pair neighbours level by level; an odd one out at
    # level L is the group's pending sum[L]
    pending: list[tuple[np.ndarray, np.ndarray]] = []  # per level: (groups, partial sums)
    level_groups, level_sums = owner, sums
    while len(level_sums):
        first = np.r_[True, level_groups[1:] != level_groups[:-1]]
        rank = np.arange(len(level_groups)) - np.maximum.accumulate(
            np.where(first, np.arange(len(level_groups)), 0))
        size = np.bincount(level_groups, minlength=n_groups)[level_groups]
        odd_last = (size % 2 == 1) & (rank == size - 1)
        pending.append((level_groups[odd_last], 0.0 + level_sums[odd_last]))
        left = ~odd_last & (rank % 2 == 0)
        right = np.flatnonzero(left) + 1
        level_groups = level_groups[left]
        level_sums = (0.0 + level_sums[left]) + level_sums[right]
    total = np.zeros(n_groups)
    highest = np.full(n_groups, -1)
    for level, (grp, _) in enumerate(pending):
        highest[grp] = level
    for level, (grp, part) in enumerate(pending):
        # sum[level] += sum[level - 1] for level <= the group's highest level
        current = np.zeros(n_groups)
        current[grp] = part
        active = highest >= level
        total = np.where(active, (current + total) if level else current, total)
    means = total / np.maximum(counts, 1)
    return means, counts


# -- writing -----------------------------------------------------------------------------------
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


def _format_attr(column, null_text: str):
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
        joined = _join([_format_attr(_combine(features.column(c)), null_text) for c in names],
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


# -- reading -----------------------------------------------------------------------------------
def read_serving_tree(path: Path) -> TdmTree:
    """Parse ``serving_tree`` back into a TdmTree (ids are ints unless any id is not an integer)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines:
        raise InputError(f"{path}: empty serving_tree")
    try:
        num_levels, k = (int(v) for v in lines[0].split())
        pairs = [line.split(" ", 1) for line in lines[1:]]
        codes = np.array([int(c) for c, _ in pairs], dtype=np.int64)
    except ValueError as exc:
        raise InputError(f"{path}: not a serving_tree ({exc})") from None
    id_texts = [i for _, i in pairs]
    try:
        ids = np.array([int(i) for i in id_texts], dtype=np.int64)
        hash_ids = False
    except ValueError:
        ids = np.array(id_texts, dtype=object)
        hash_ids = True
    if len(codes) == 0 or codes[0] != 0 or np.any(np.diff(codes) <= 0):
        raise InputError(f"{path}: codes must start at the root (0) and ascend")
    depth = num_levels - 1
    if codes[-1] >= first_code(depth + 1, k):
        raise InputError(f"{path}: a code lies below level {depth}")
    return TdmTree(k=k, depth=depth, codes=codes, ids=ids, hash_ids=hash_ids)


@dataclass
class GraphTables:
    """What the GraphLearn tables say about a tree, in node-table order (level order)."""

    ids: list[str]
    levels: list[int]
    features: list[str]  # the feature string minus "<level>,<id>"
    parent: dict[str, str]  # child id -> parent id (from predict_edge_table)
    children_order: list[tuple[str, str]]  # predict edges in file order, without the -1 row
    leaf_ancestors: dict[str, list[str]]  # leaf id -> ancestors parent-first, root excluded
    root: str

    @classmethod
    def of_tree(cls, tree: TdmTree, features=None, attr_columns=(), raw_columns=(),
                attr_delimiter: str = ",") -> "GraphTables":
        """The tables a tree should produce (for comparing a parse with the tree)."""
        ids = tree.id_strings()
        parent_index = tree.parent_index()
        parent = {ids[i]: ids[p] for i, p in enumerate(parent_index) if p >= 0}
        order = [(ids[p], ids[i]) for i, p in enumerate(parent_index) if p >= 0]
        leaf_ancestors = {}
        for i in np.flatnonzero(tree.leaf_mask):
            chain, node = [], ids[i]
            while node in parent and parent[node] != ids[0]:
                node = parent[node]
                chain.append(node)
            leaf_ancestors[ids[i]] = chain
        feats = [""] * len(ids)
        groups = [(names, null_text)
                  for names, null_text in ((attr_columns, ""), (raw_columns, "0")) if names]
        if features is not None and groups:
            cols = [[attr_delimiter.join(row) for row in zip(
                *[_format_attr(_combine(features.column(c)), null_text).to_pylist() for c in names])]
                for names, null_text in groups]
            feats = [",".join(parts) for parts in zip(*cols)]
        return cls(ids=ids, levels=tree.levels.tolist(), features=feats, parent=parent,
                   children_order=order, leaf_ancestors=leaf_ancestors, root=ids[0])


def read_graph_tables(folder: Path) -> GraphTables:
    """Parse node_table.txt, edge_table.txt and predict_edge_table.txt, checking they agree."""
    folder = Path(folder)
    node_lines = _table_lines(folder / NODE_TABLE)
    if not node_lines or not node_lines[0].startswith("-1\t"):
        raise InputError(f"{folder / NODE_TABLE}: first row must be the -1 root marker")
    root = node_lines[0].split("\t")[2].split(",")[1]
    ids, levels, features = [], [], []
    for line in node_lines[1:]:
        node_id, weight, feature = line.split("\t")
        level, feature_id, *rest = feature.split(",", 2)
        if feature_id != node_id or weight != "1.0":
            raise InputError(f"{folder / NODE_TABLE}: malformed row {line!r}")
        ids.append(node_id)
        levels.append(int(level))
        features.append(rest[0] if rest else "")
    predict = [line.split("\t") for line in _table_lines(folder / PREDICT_EDGE_TABLE)]
    if not predict or predict[0][0] != "-1" or predict[0][1] != root:
        raise InputError(f"{folder / PREDICT_EDGE_TABLE}: first row must be -1 -> root {root}")
    order = [(src, dst) for src, dst, _ in predict[1:]]
    parent = {dst: src for src, dst in order}
    leaf_ancestors: dict[str, list[str]] = {}
    for line in _table_lines(folder / EDGE_TABLE):
        src, dst, _ = line.split("\t")
        leaf_ancestors.setdefault(src, []).append(dst)
    for leaf, chain in leaf_ancestors.items():
        expected, node = [], leaf
        while node in parent and parent[node] != root:
            node = parent[node]
            expected.append(node)
        if chain != expected:
            raise InputError(f"{folder / EDGE_TABLE}: ancestors of {leaf} {chain} disagree with "
                             f"predict_edge_table {expected}")
    return GraphTables(ids=ids, levels=levels, features=features, parent=parent,
                       children_order=order, leaf_ancestors=leaf_ancestors, root=root)


def _table_lines(path: Path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise InputError(f"{path} not found: not a tdm_tree artifact") from None
    if lines and lines[-1] == "":
        lines.pop()
    return lines[1:]  # typed header
