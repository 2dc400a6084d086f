"""Item ids read for a tree: int64 for tzrec's int mode, strings for its hash mode; nulls and
duplicates rejected (every item must be exactly one leaf)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from recbuild.errors import InputError


def ids_for_hash_mode(ids) -> list[str]:
    """Item ids as strings (hash mode keeps string ids; ints print as decimal)."""
    import pyarrow as pa

    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    return ids.cast(pa.string()).to_pylist()


def validate_item_ids(ids, where: str, hash_ids: bool):
    """Item ids -> int64 numpy (int mode) or list[str] (hash mode); rejects nulls and duplicates."""
    import pyarrow as pa

    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if ids.null_count:
        bad = int(np.argmin(ids.is_valid().to_numpy(zero_copy_only=False)))
        raise InputError(f"{where}: item id is null at row {bad}")
    if hash_ids:
        values: Sequence = ids_for_hash_mode(ids)
        keys = np.array(values, dtype=object)
        uniq, counts = np.unique(keys, return_counts=True)
    else:
        if pa.types.is_dictionary(ids.type):
            ids = ids.dictionary_decode()
        if not pa.types.is_integer(ids.type):
            raise InputError(f"{where}: item ids have type {ids.type}; integer ids are needed for "
                             "tzrec's int mode (internal ids = max item id + code + 1), or set "
                             "id_hash: true for string ids")
        values = ids.cast(pa.int64()).to_numpy(zero_copy_only=False)
        if len(values) and values.min() < 0:
            raise InputError(f"{where}: negative item ids (e.g. {int(values.min())}) could collide with "
                             "internal node ids or the -1 root marker; use id_hash: true")
        uniq, counts = np.unique(values, return_counts=True)
    if np.any(counts > 1):
        dups = [str(v) for v in uniq[counts > 1][:3]]
        raise InputError(f"{where}: duplicate item ids ({', '.join(dups)}); every item must be one leaf")
    return values
