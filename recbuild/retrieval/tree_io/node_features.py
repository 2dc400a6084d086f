"""The node_feature table: every node's item attributes, internal nodes holding the mode (attrs) or
the mean (raw attrs) of their leaves; means as pyarrow computes them in tzrec's init_tree."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from recbuild.errors import InputError
from recbuild.retrieval.tdm_tree.codes import first_code
from recbuild.retrieval.tdm_tree.tree import TdmTree
from recbuild.retrieval.tree_io.arrow_mean import arrow_group_means


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
    id_type = pa.string() if tree.hash_ids else pa.int64()
    ids = tree.ids.tolist() if tree.hash_ids else tree.ids  # (int ids: no Python int per node)
    columns = {id_column: pa.array(ids, type=id_type)}
    if not attr_columns and not raw_columns:
        return pa.table(columns)
    leaf_position = np.searchsorted(tree.codes[n_internal:], leaf_codes)  # leaf row -> node order
    by_code = np.empty(len(leaf_codes), dtype=np.int64)
    by_code[leaf_position] = np.arange(len(leaf_codes))
    for name in attr_columns:
        column = plain_array(leaf_table.column(name))
        internal = [_group_mode(column, groups, n) for groups, n in _level_groups(tree, leaf_codes, n_internal)]
        columns[name] = pa.concat_arrays([*internal, column.take(pa.array(by_code))])
    for name in raw_columns:
        column = plain_array(leaf_table.column(name))
        internal = [_group_mean(column, groups, n) for groups, n in _level_groups(tree, leaf_codes, n_internal)]
        columns[name] = pa.concat_arrays([*internal, column.take(pa.array(by_code))])
    return pa.table(columns)


def plain_array(column):
    """The column as one array of plain values (chunks combined, a dictionary decoded)."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column


def _level_groups(tree: TdmTree, leaf_codes: np.ndarray, n_internal: int):
    """Per internal level, top first: ((leaf rows, node index within the level), nodes of the level).
    A node's mode or mean depends on its own leaves only, so levels are done one at a time: one
    (leaf, ancestor) pair per leaf in memory instead of one per leaf and level."""
    internal = tree.codes[:n_internal]
    leaf_rows = np.arange(len(leaf_codes))
    for level in range(tree.depth):
        lo, hi = np.searchsorted(internal, [first_code(level, tree.k), first_code(level + 1, tree.k)])
        anc = np.asarray(leaf_codes, dtype=np.int64)
        for _ in range(tree.depth - level):
            anc = (anc - 1) // tree.k
        yield (leaf_rows, np.searchsorted(internal[lo:hi], anc)), int(hi - lo)


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
    # (no valid value at all: no group, every node gets the empty value)
    starts = np.flatnonzero(np.r_[True, key_sorted[1:] != key_sorted[:-1]]) if len(key_sorted) else \
        np.zeros(0, dtype=np.int64)
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
