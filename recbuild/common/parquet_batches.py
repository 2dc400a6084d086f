"""Reading a parquet file in batches with bounded memory: a reader per row group
(``row_group_batches``), re-cut to a fixed size where the caller needs one (``file_batches``)."""

from __future__ import annotations

from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq


def row_group_batches(pf: pq.ParquetFile, batch_size: int, columns: Sequence[str],
                      use_threads: bool = True) -> Iterator[pa.RecordBatch]:
    """Every row group's batches in order (at most batch_size rows each; a group's last batch may be
    shorter), each group read by a reader of its own. pyarrow's reader over a whole file keeps every
    row group it decoded until the file is closed (0.4 GB by the end of a 20M-row file of 306 row
    groups, pyarrow 26); a reader per row group keeps none."""
    for group in range(pf.metadata.num_row_groups):
        yield from pf.iter_batches(batch_size=batch_size, row_groups=[group], columns=list(columns),
                                   use_threads=use_threads)


def file_batches(pf: pq.ParquetFile, batch_size: int, columns: Sequence[str], use_threads: bool = True
                 ) -> Iterator[pa.RecordBatch]:
    """The batches ``pf.iter_batches(batch_size, columns)`` gives (batch_size rows each, across row
    groups, the last one shorter), read by ``row_group_batches``."""
    held: list[pa.RecordBatch] = []
    rows = 0
    for batch in row_group_batches(pf, batch_size, columns, use_threads):
        if not held and batch.num_rows == batch_size:
            yield batch  # (the common case: row groups hold whole batches; nothing copied)
            continue
        held.append(batch)
        rows += batch.num_rows
        while rows >= batch_size:
            table = pa.Table.from_batches(held)
            yield table.slice(0, batch_size).combine_chunks().to_batches()[0]
            held = [b for b in table.slice(batch_size).to_batches() if b.num_rows]
            rows -= batch_size
    if rows:
        yield pa.Table.from_batches(held).combine_chunks().to_batches()[0]
