"""A tree known by its leaves alone (``TreeLeaves``): the leaves' codes in ascending order and their
item ids. Every internal node is an ancestor of a leaf and its id follows from its code, so the
nodes of any level can be walked in code order, chunk by chunk, without ever holding the whole
tree: 16 bytes an item instead of the ~100 of ``TdmTree`` (codes and ids of every node, and the
sorts that build them). The tree files are written from it (recbuild/retrieval/tree_io/writers.py).

The ancestor on level l of a leaf of code c on level D is ``(c - first(D)) // k**(D-l) + first(l)``:
codes of a level are the positions of a complete k-ary heap, so a subtree's leaves are a contiguous
run of the sorted leaf codes, and the ancestors of sorted leaves are sorted too.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import numpy as np

from recbuild.errors import BuildError, InputError
from recbuild.retrieval.tdm_tree.codes import INT64_MAX, ancestors_on, first_code
from recbuild.retrieval.tdm_tree.tree import TdmTree

# Leaves handled at once when walking a level: a few tens of MB of codes and their ancestors.
LEAVES_PER_CHUNK = 1 << 20


@dataclass
class TreeLeaves:
    """Leaves in code order: ``codes`` (int64, strictly ascending, all on level ``depth``) and
    ``ids`` aligned with them (int64 array in int mode; array or list of str in hash mode)."""

    k: int
    depth: int
    codes: np.ndarray
    ids: object
    hash_ids: bool = False

    @classmethod
    def from_leaf_codes(cls, leaf_codes: np.ndarray, leaf_ids, k: int, depth: int, hash_ids: bool) -> "TreeLeaves":
        """From codes in any order (one per item, aligned with ``leaf_ids``): sorted here, stably."""
        leaf_codes = np.asarray(leaf_codes, dtype=np.int64)
        order = np.argsort(leaf_codes, kind="stable")
        codes = leaf_codes[order]
        ids = [leaf_ids[i] for i in order] if hash_ids else np.asarray(leaf_ids, dtype=np.int64)[order]
        return cls.checked(k, depth, codes, ids, hash_ids)

    @classmethod
    def of_tree(cls, tree: "TdmTree | TreeLeaves") -> "TreeLeaves":
        """The leaves of a tree held whole (as read back from serving_tree); leaves as they are."""
        if isinstance(tree, TreeLeaves):
            return tree
        mask = tree.leaf_mask
        ids = tree.ids[mask]
        return cls(tree.k, tree.depth, tree.codes[mask], list(ids) if tree.hash_ids else ids, tree.hash_ids)

    @classmethod
    def checked(cls, k: int, depth: int, codes: np.ndarray, ids, hash_ids: bool) -> "TreeLeaves":
        """The leaves after the checks a tree's files rely on (sorted ``codes`` expected)."""
        leaves = cls(k, depth, codes, ids, hash_ids)
        if len(codes) == 0:
            raise BuildError("internal error: a tree without leaves")
        if codes[0] < first_code(depth, k) or codes[-1] >= first_code(depth + 1, k):
            raise BuildError("internal error: a leaf is not on the last level")
        for lo in range(0, len(codes), LEAVES_PER_CHUNK):
            part = codes[lo:lo + LEAVES_PER_CHUNK + 1]
            if np.any(part[1:] <= part[:-1]):
                raise BuildError("internal error: two items share a leaf code")
        if not hash_ids and leaves.id_base + int(codes[-1]) + 1 > INT64_MAX:
            raise InputError("item ids are too large: internal node ids (max item id + code + 1) would "
                             "overflow int64; use id_hash: true")
        return leaves

    @property
    def num_levels(self) -> int:
        return self.depth + 1

    @property
    def n_items(self) -> int:
        return len(self.codes)

    @cached_property
    def id_base(self) -> int:
        """tzrec's int mode: internal node ids are ``max(0, max item id) + code + 1``."""
        return max(0, int(np.max(self.ids))) if len(self.codes) else 0

    def ancestors(self, leaf_codes: np.ndarray, level: int) -> np.ndarray:
        """The codes on ``level`` above ``leaf_codes``."""
        return ancestors_on(leaf_codes, self.k, self.depth, level)

    def level_runs(self, level: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """(codes, leaves under each, index of the first of those leaves), in code order, in chunks:
        every node of ``level`` once (a node whose leaves straddle two chunks comes out whole)."""
        if level == self.depth:
            for lo in range(0, len(self.codes), LEAVES_PER_CHUNK):
                part = self.codes[lo:lo + LEAVES_PER_CHUNK]
                yield part, np.ones(len(part), dtype=np.int64), lo
            return
        pending = None  # (code, count, first leaf) of the last node of the previous chunk
        for lo in range(0, len(self.codes), LEAVES_PER_CHUNK):
            anc = self.ancestors(self.codes[lo:lo + LEAVES_PER_CHUNK], level)
            starts = np.flatnonzero(np.r_[True, anc[1:] != anc[:-1]])
            codes = anc[starts]
            counts = np.diff(np.r_[starts, len(anc)])
            firsts = starts + lo
            if pending is not None:
                if codes[0] == pending[0]:
                    counts[0] += pending[1]
                    firsts[0] = pending[2]
                else:
                    yield np.array([pending[0]]), np.array([pending[1]]), pending[2]
            pending = (int(codes[-1]), int(counts[-1]), int(firsts[-1]))
            if len(codes) > 1:
                yield codes[:-1], counts[:-1], int(firsts[0])
        if pending is not None:
            yield np.array([pending[0]]), np.array([pending[1]]), pending[2]

    def node_chunks(self, first_level: int = 0) -> Iterator[tuple[int, np.ndarray, int]]:
        """(level, codes, first leaf) chunks of every node from ``first_level`` down, in code order
        (= the order of serving_tree and node_table); see ``level_runs`` for the first leaf."""
        for level in range(first_level, self.num_levels):
            for codes, _, first in self.level_runs(level):
                yield level, codes, first

    def internal_ids(self, codes: np.ndarray):
        """Ids of internal nodes from their codes, as a pyarrow large_string array."""
        import pyarrow as pa

        if self.hash_ids:
            width = len(str(int(self.codes[-1])))
            return pa.array([f"nonleaf#{int(c):0{width}d}" for c in codes], type=pa.large_string())
        return pa.array(self.id_base + np.asarray(codes, dtype=np.int64) + 1).cast(pa.large_string())

    def leaf_ids(self, lo: int, hi: int):
        """Ids of the leaves lo..hi (in code order) as a pyarrow large_string array."""
        import pyarrow as pa

        part = self.ids[lo:hi]
        if self.hash_ids:
            return pa.array(list(part), type=pa.large_string())
        return pa.array(part).cast(pa.large_string())

    def ids_of(self, level: int, codes: np.ndarray, first_leaf: int):
        """Ids of consecutive nodes of one level (``first_leaf``: the leaf index of codes[0], used
        on the leaf level)."""
        if level < self.depth:
            return self.internal_ids(codes)
        return self.leaf_ids(first_leaf, first_leaf + len(codes))

    def int_ids_of(self, level: int, codes: np.ndarray, first_leaf: int) -> np.ndarray:
        """Int mode: the ids as int64 numbers (node_feature's id column)."""
        if level < self.depth:
            return self.id_base + np.asarray(codes, dtype=np.int64) + 1
        return np.asarray(self.ids[first_leaf:first_leaf + len(codes)], dtype=np.int64)

    def to_tdm_tree(self) -> TdmTree:
        """Every node in memory (``TdmTree``): for attribute tables, which need all nodes at once."""
        internal = [codes for level, codes, _ in self.node_chunks() if level < self.depth]
        codes = np.concatenate([*internal, self.codes])
        if self.hash_ids:
            names = [s for part in internal for s in self.internal_ids(part).to_pylist()]
            ids = np.array(names + list(self.ids), dtype=object)
        else:
            ids = np.concatenate([self.id_base + np.concatenate(internal) + 1 if internal else
                                  np.zeros(0, np.int64), self.ids]).astype(np.int64)
        return TdmTree(k=self.k, depth=self.depth, codes=codes, ids=ids, hash_ids=self.hash_ids)


def assemble_tree(leaf_codes: np.ndarray, leaf_ids, k: int, depth: int, hash_ids: bool) -> TdmTree:
    """All nodes (leaves plus every ancestor) with their ids. ``leaf_ids``: int64 array or list[str]."""
    return TreeLeaves.from_leaf_codes(leaf_codes, leaf_ids, k, depth, hash_ids).to_tdm_tree()
