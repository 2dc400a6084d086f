"""``pyarrow.compute.mean`` per group, reproduced to the last bit for many groups at once (tzrec's
tree builder takes internal nodes' raw attributes that way)."""

from __future__ import annotations

import numpy as np

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
