"""The tree itself: every node's code and id in level order (``TdmTree``; built from the leaves by
``leaves.assemble_tree``) and checked (``check_tree_invariants``).

Internal node ids are ``max(0, max item id) + code + 1`` (tzrec's int mode) or, with string ids,
``nonleaf#<code, zero-padded to the width of the largest leaf code>`` (tzrec's hash mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recbuild.retrieval.tdm_tree.codes import first_code, level_of


@dataclass
class TdmTree:
    """Every node of a TDM tree in level order (= ascending code)."""

    k: int
    depth: int  # leaves are on level `depth`; the tree has depth + 1 levels
    codes: np.ndarray  # int64, ascending
    ids: np.ndarray  # int64 (int mode) or object array of str (hash mode), aligned with codes
    hash_ids: bool = False

    @property
    def num_levels(self) -> int:
        return self.depth + 1

    @property
    def levels(self) -> np.ndarray:
        return level_of(self.codes, self.k, self.depth)

    @property
    def leaf_mask(self) -> np.ndarray:
        return self.codes >= first_code(self.depth, self.k)

    @property
    def root_id(self):
        return self.ids[0]

    def id_strings(self) -> list[str]:
        return [str(v) for v in self.ids.tolist()]

    def index_of_codes(self, codes: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.codes, codes)
        found = self.codes[np.minimum(pos, len(self.codes) - 1)]
        if np.any(pos >= len(self.codes)) or np.any(found != codes):
            raise KeyError("code not in tree")
        return pos

    def parent_index(self) -> np.ndarray:
        """Index (into codes) of each node's parent; -1 for the root."""
        parent = np.full(len(self.codes), -1, dtype=np.int64)
        parent[1:] = self.index_of_codes((self.codes[1:] - 1) // self.k)
        return parent

    def children_index(self, node_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(owner position in node_index, child index) for every existing child, in code order."""
        child_codes = self.codes[node_index][:, None] * self.k + 1 + np.arange(self.k)[None, :]
        pos = np.searchsorted(self.codes, child_codes)
        pos_clipped = np.minimum(pos, len(self.codes) - 1)
        exists = self.codes[pos_clipped] == child_codes
        owner = np.nonzero(exists)[0]
        return owner, pos_clipped[exists]

    def same_as(self, other: "TdmTree") -> bool:
        return (self.k == other.k and self.depth == other.depth
                and np.array_equal(self.codes, other.codes) and self.id_strings() == other.id_strings())


def check_tree_invariants(tree: TdmTree, n_items: int) -> None:
    """Every item is exactly one leaf, all leaves on the last level (raises AssertionError)."""
    leaves = tree.leaf_mask
    assert int(leaves.sum()) == n_items
    assert np.all(tree.levels[leaves] == tree.depth)
    assert tree.codes[0] == 0 and np.all(np.diff(tree.codes) > 0)
    parent = tree.parent_index()
    assert np.all(parent[1:] >= 0)
