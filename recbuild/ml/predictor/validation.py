"""Validation before any forward pass: every file's parquet footer (schema, column types, null
counts, row counts) and one pre-pass over the **id column only**, which finds null and duplicate ids.

That pre-pass holds the id column in memory (8 bytes a row for integer ids, sorted in place; the
strings for string ids) - a small fraction of the table, and the price of detecting duplicates
exactly before work starts. With ``on_duplicate: first|last`` it yields the sorted global row
numbers to drop, which the reading side (``source.filtered_batches``) filters out batch by batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recbuild.common.ids import sorted_has_repeats
from recbuild.common.parquet_batches import file_batches
from recbuild.errors import BuildError, InputError
from recbuild.ml import feature_io
from recbuild.ml.feature_io import FeatureSpec
from recbuild.ml.predictor.plan import InputPlan
from recbuild.ml.predictor.source import ParquetInput

ON_DUPLICATE = ("error", "first", "last")


def _check_schema(schema: pa.Schema, path: str, id_column: str, reserved: Sequence[str],
                  specs: Sequence[FeatureSpec]) -> None:
    feature_io.validate_columns(schema, specs, where=f"{path}")
    problems = []
    if id_column not in schema.names:
        problems.append(f"id column {id_column!r} is missing (set id_column to one of: "
                        f"{', '.join(schema.names)})")
    else:
        t = schema.field(id_column).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if not (pa.types.is_integer(t) or feature_io.is_stringlike(t)):
            problems.append(f"id column {id_column!r} has type {t}; ids must be integers or strings")
    missing = [c for c in reserved if c not in schema.names]
    if missing:
        problems.append(f"reserved column(s) {', '.join(map(repr, missing))} missing "
                        f"(columns present: {', '.join(schema.names)})")
    if problems:
        raise InputError(f"{path}: " + "; ".join(problems))


def _stat_null_count(metadata: pq.FileMetaData, column: str) -> int | None:
    """Nulls in a top-level primitive column according to the footer, None when unknown."""
    schema = metadata.schema
    # A top-level primitive column is the leaf whose path is just its name; nested columns have
    # no such leaf and are skipped (their nulls are found while reading).
    index = next((i for i in range(len(schema)) if schema.column(i).path == column), None)
    if index is None:
        return None
    total = 0
    for rg in range(metadata.num_row_groups):
        stats = metadata.row_group(rg).column(index).statistics
        if stats is None or not stats.has_null_count:
            return None
        total += stats.null_count
    return total


def _duplicate_rows(ids: pa.ChunkedArray, on_duplicate: str, plan: InputPlan,
                    id_column: str) -> np.ndarray:
    """Sorted global rows to drop (empty without duplicates); raises for ``on_duplicate: error``."""
    n = len(ids)
    flat = ids.combine_chunks()
    if pa.types.is_dictionary(flat.type):
        flat = flat.dictionary_decode()
    # Strings: decide "no duplicates" (the common case) with one hash pass. (Integer ids come here
    # only when ``sorted_has_repeats`` found a repeat.)
    if feature_io.is_stringlike(flat.type):
        encoded = pc.dictionary_encode(flat)
        if len(encoded.dictionary) == n:
            return np.empty(0, dtype=np.int64)
        codes = feature_io.numpy_view(encoded.indices)
    else:
        codes = feature_io.numpy_view(flat)
    order = np.argsort(codes, kind="stable")  # stable: equal ids stay in row order
    sorted_codes = codes[order]
    repeat = sorted_codes[1:] == sorted_codes[:-1]  # position i+1 repeats position i
    if not repeat.any():  # (dictionary-encoded integer ids come here unchecked)
        return np.empty(0, dtype=np.int64)
    if on_duplicate == "error":
        later = order[1:][repeat]
        row = int(later.min())
        value = flat[row].as_py()
        first = int(order[np.searchsorted(sorted_codes, codes[row], side="left")])
        raise InputError(
            f"duplicate ids in column {id_column!r}: {value!r} appears at {plan.locate(first)} and "
            f"{plan.locate(row)} ({int(repeat.sum())} duplicate row(s) in all); deduplicate the "
            f"input, or set on_duplicate: first (keep the first row of each id) or last")
    drop = order[1:][repeat] if on_duplicate == "first" else order[:-1][repeat]
    return np.sort(drop).astype(np.int64)


def _id_batches(source: ParquetInput, id_column: str, batch_size: int):
    """(file, first row in the file, id column) of every batch, file by file."""
    for path in source.paths:
        row_in_file = 0
        for batch in file_batches(source.open(path), max(batch_size, 65_536), [id_column]):
            yield path, row_in_file, batch.column(0)
            row_in_file += batch.num_rows


def plan_input(source: ParquetInput, specs: Sequence[FeatureSpec], id_column: str,
               reserved_columns: Sequence[str], on_duplicate: str, batch_size: int) -> InputPlan:
    """Validate every file's footer and the id column; nothing else is read."""
    if on_duplicate not in ON_DUPLICATE:
        raise BuildError(f"on_duplicate must be one of {', '.join(ON_DUPLICATE)}, got {on_duplicate!r}")
    reserved = [c for c in dict.fromkeys(reserved_columns) if c != id_column]
    passthrough = [id_column] + reserved
    read_columns = list(dict.fromkeys(passthrough + [s.column for s in specs]))
    file_rows: list[int] = []
    reference: pa.Schema | None = None
    plan = InputPlan(source.paths, file_rows, read_columns, pa.schema([]))
    for path in source.paths:
        pf = source.open(path)
        schema = pf.schema_arrow
        _check_schema(schema, path, id_column, reserved, specs)
        used = pa.schema([schema.field(c) for c in read_columns])
        if reference is None:
            reference = used
        elif not used.equals(reference):
            diffs = [f"{f.name}: {f.type} here, {reference.field(f.name).type} in "
                     f"{Path(source.paths[0]).name}" for f in used if f.type != reference.field(f.name).type]
            raise InputError(f"{path}: column types differ between input files ({'; '.join(diffs)}); "
                             "write every file with the same schema")
        metadata = pf.metadata
        for spec in specs:
            if spec.kind == "sequence":
                continue  # a null sequence is an empty one
            nulls = _stat_null_count(metadata, spec.column)
            if nulls:
                raise InputError(f"{path}: column {spec.column!r} (feature {spec.name!r}) has {nulls} "
                                 "null value(s); fill them (0 for numeric, an id for id features) "
                                 "or drop those rows")
        file_rows.append(metadata.num_rows)
    plan.passthrough_schema = pa.schema([reference.field(c) for c in passthrough])
    if plan.total_rows == 0:
        raise InputError(f"the input has no rows ({len(source.paths)} file(s)); nothing to embed")
    # The id pre-pass: stream the id column only, batch by batch. Integer ids go into one array
    # sized from the footers and sorted in place (8 bytes a row); a repeat, the rare case, reads
    # the column again to find the rows.
    id_type = reference.field(id_column).type
    integer_ids = pa.types.is_integer(id_type)
    sorted_ids = np.empty(plan.total_rows, dtype=np.int64) if integer_ids else None
    id_chunks: list[pa.Array] = []
    filled = 0
    for path, row_in_file, column in _id_batches(source, id_column, batch_size):
        if column.null_count:
            first_null = int(np.argmin(column.is_valid().to_numpy(zero_copy_only=False)))
            raise InputError(
                f"{path}: id column {id_column!r} has a null at row {row_in_file + first_null}; "
                "every row needs an id: fill or drop such rows")
        if integer_ids:
            sorted_ids[filled:filled + len(column)] = feature_io.numpy_view(column)
            filled += len(column)
        else:
            id_chunks.append(column)
    if integer_ids:
        sorted_ids.sort()
        repeats = sorted_has_repeats(sorted_ids)
        del sorted_ids
        if repeats:
            id_chunks = [column for _, _, column in _id_batches(source, id_column, batch_size)]
    if id_chunks:
        ids = pa.chunked_array(id_chunks, type=id_type)
        plan.drop_rows = _duplicate_rows(ids, on_duplicate, plan, id_column)
    return plan
