"""Stable 63-bit integer ids for string ids (xxh3-64 of the UTF-8 bytes), and the repeat check of a
sorted id column (``sorted_has_repeats``) that duplicate-id checks share.

Models hash string id features with it and FAISS indexes key string item ids with it, so both sides
of retrieval agree on an id without sharing anything else.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PAD_ID = -1  # a null or padded id
_MASK_63 = np.uint64((1 << 63) - 1)


def _xxh3_63(values: list[str | bytes]) -> np.ndarray:
    import xxhash

    digest = xxhash.xxh3_64_intdigest
    hashed = np.fromiter((digest(v) for v in values), dtype=np.uint64, count=len(values))
    return (hashed & _MASK_63).astype(np.int64)


def hash_string_ids(values: Any) -> np.ndarray:
    """Stable int64 ids for string ids: xxh3-64 of the UTF-8 bytes, masked to 63 bits (never < 0).

    Accepts a pyarrow (chunked) string/binary/dictionary array or a numpy array of str/bytes. Only
    the unique values are hashed (dictionary encoding), then gathered back with ``take``, so a
    column with few distinct ids costs little. Nulls map to ``PAD_ID`` (-1); callers that must not
    see nulls check ``null_count`` first.
    """
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "S":
            values = pa.array(values, type=pa.binary())
        else:
            values = pa.array(values.tolist() if values.dtype.kind == "O" else values, type=pa.string())
    elif not isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = pa.array(list(values), type=pa.string())
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not pa.types.is_dictionary(values.type):
        if pa.types.is_string_view(values.type):
            values = values.cast(pa.string())
        elif pa.types.is_binary_view(values.type):
            values = values.cast(pa.binary())
        values = pc.dictionary_encode(values)
    # string -> binary is a zero-copy view of the UTF-8 bytes; to_pylist then yields bytes, which
    # is what xxhash takes (and str and bytes columns give the same ids).
    unique_hashes = _xxh3_63(values.dictionary.cast(pa.binary()).to_pylist())
    indices = values.indices
    if indices.null_count:
        idx = indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        out = unique_hashes[idx] if len(unique_hashes) else np.zeros(len(idx), dtype=np.int64)
        out[~indices.is_valid().to_numpy(zero_copy_only=False)] = PAD_ID
        return out
    idx = indices.to_numpy(zero_copy_only=False)
    return unique_hashes[idx]


# -- column validation ----------------------------------------------------------------------------


def sorted_has_repeats(sorted_ids: np.ndarray, chunk: int = 1 << 20) -> bool:
    """Whether a sorted array holds a value twice (compared a chunk at a time: no bool per row)."""
    for lo in range(0, max(len(sorted_ids) - 1, 0), chunk):
        part = sorted_ids[lo:lo + chunk + 1]
        if (part[1:] == part[:-1]).any():
            return True
    return False
