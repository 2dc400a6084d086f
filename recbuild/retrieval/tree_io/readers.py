"""Reading a tree's files back: serving_tree into a TdmTree, and the GraphLearn text tables into
``GraphTables``, checked against each other (and comparable with what a tree should produce)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recbuild.errors import InputError
from recbuild.retrieval.tdm_tree.codes import first_code
from recbuild.retrieval.tdm_tree.tree import TdmTree
from recbuild.retrieval.tree_io.formats import EDGE_TABLE, NODE_TABLE, PREDICT_EDGE_TABLE
from recbuild.retrieval.tree_io.node_features import plain_array
from recbuild.retrieval.tree_io.writers import format_attr


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
                *[format_attr(plain_array(features.column(c)), null_text).to_pylist() for c in names])]
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
