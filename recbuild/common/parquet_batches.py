"""Reading a parquet file in batches of a fixed size with bounded memory (``file_batches``)."""

from __future__ import annotations

from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq


def file_batches(pf: pq.ParquetFile, batch_size: int, columns: Sequence[str], use_threads: bool = True
                 ) -> Iterator[pa.RecordBatch]:
    """The batches ``pf.iter_batches(batch_size, columns)`` gives (batch_size rows each, across row
    groups, the last one shorter), read one row group at a time. pyarrow's reader over a whole file
    keeps memory as it goes (0.4 GB by the end of a 20M-row file of 306 row groups, pyarrow 26);
    a reader per row group keeps none."""
    held: list[pa.RecordBatch] = []
    rows = 0
    for group in range(pf.metadata.num_row_groups):
        for batch in pf.iter_batches(batch_size=batch_size, row_groups=[group], columns=list(columns),
                                     use_threads=use_threads):
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
