"""TorchEasyRec's node coding: how deep a tree is, where each level's codes start, the level and
the ancestors of a code.

Root code 0, the children of code c are ``k*c+1 .. k*c+k``, the parent of c is ``(c-1)//k``; codes
on level L run from ``(k**L-1)//(k-1)``. Integer arithmetic throughout: tzrec's ``math.log`` gives
an extra level for ``log(125, 5)`` and its ``k**L-1`` "first code" is right for k == 2 only.
"""

from __future__ import annotations

import numpy as np

from recbuild.errors import BuildError, InputError

INT64_MAX = np.iinfo(np.int64).max


def tree_depth(n_items: int, k: int) -> int:
    """Smallest D >= 1 with k**D >= n_items (integer arithmetic; a lone item still gets a root)."""
    if k < 2:
        raise BuildError(f"n_cluster must be at least 2, got {k}; a tree needs branching")
    depth, capacity = 1, k
    while capacity < n_items:
        depth += 1
        capacity *= k
    return depth


def first_code(level: int, k: int) -> int:
    """Code of the leftmost node on ``level`` (root level 0)."""
    return (k ** level - 1) // (k - 1)


def ancestors_on(leaf_codes: np.ndarray, k: int, depth: int, level: int) -> np.ndarray:
    """The codes on ``level`` above ``leaf_codes`` (every leaf on level ``depth``): a leaf's offset
    in its level, divided by the leaves under one node of ``level``, is its ancestor's offset."""
    span = k ** (depth - level)
    return (np.asarray(leaf_codes, dtype=np.int64) - first_code(depth, k)) // span + first_code(level, k)


def level_of(codes: np.ndarray, k: int, depth: int) -> np.ndarray:
    """The level of each code (root level 0) in a tree whose leaves are on ``depth``."""
    starts = np.array([first_code(level, k) for level in range(depth + 2)], dtype=np.int64)
    return (np.searchsorted(starts, codes, side="right") - 1).astype(np.int64)


def check_code_range(k: int, depth: int) -> None:
    """Raises InputError when the codes of such a tree would not fit int64."""
    if first_code(depth + 1, k) > INT64_MAX:
        raise InputError(f"a tree with n_cluster={k} and {depth} levels has codes beyond int64")


def ancestor_codes(leaf_codes: np.ndarray, k: int, depth: int) -> np.ndarray:
    """[n_leaves, depth] codes: column 0 the parent, the last column the root (code 0)."""
    out = np.empty((len(leaf_codes), depth), dtype=np.int64)
    current = np.asarray(leaf_codes, dtype=np.int64)
    for level in range(depth):
        current = (current - 1) // k
        out[:, level] = current
    return out
