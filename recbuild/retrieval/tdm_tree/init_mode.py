"""Init mode: leaf codes from tzrec's contiguous split of the items sorted by (category, id).

Slice i of a node's items ``[s, e)`` is ``[s + i*n//k, s + (i+1)*n//k)`` and gets child ``k-1-i``
(tzrec's TreeGenerator, so the first sorted item ends up with the highest code).
"""

from __future__ import annotations

import numpy as np

from recbuild.retrieval.tdm_tree.codes import check_code_range, tree_depth


def init_leaf_codes(n_items: int, k: int, depth: int | None = None) -> np.ndarray:
    """Leaf codes of items 0..n-1 *in sorted order* under tzrec's contiguous split."""
    depth = tree_depth(n_items, k) if depth is None else depth
    check_code_range(k, depth)
    position = np.arange(n_items, dtype=np.int64)
    start = np.zeros(n_items, dtype=np.int64)
    size = np.full(n_items, n_items, dtype=np.int64)
    code = np.zeros(n_items, dtype=np.int64)
    for _ in range(depth):
        offset = position - start
        # slice i holds offsets [i*size//k, (i+1)*size//k): the largest i with i*size//k <= offset
        slice_no = ((offset + 1) * k - 1) // size
        low = (slice_no * size) // k
        high = ((slice_no + 1) * size) // k
        start += low
        size = high - low
        code = code * k + 1 + (k - 1 - slice_no)
    assert np.all(size == 1), "an item was not isolated: depth too small"
    return code


def init_order(ids, categories) -> np.ndarray:
    """Row order for init mode: by category (as a string, like tzrec; null is ""), then by id."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cate = categories
    if isinstance(cate, pa.ChunkedArray):
        cate = cate.combine_chunks()
    if pa.types.is_dictionary(cate.type):
        cate = cate.dictionary_decode()
    cate = pc.fill_null(cate.cast(pa.string()), "")
    table = pa.table({"cate": cate, "id": ids})
    return pc.sort_indices(table, sort_keys=[("cate", "ascending"), ("id", "ascending")]).to_numpy()
