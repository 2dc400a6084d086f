"""Reading the parquet input: locating its files (paths, directories, globs, fsspec URLs) and
streaming their record batches in order, with the rows the validation pass dropped left out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recbuild.common.parquet_batches import file_batches
from recbuild.errors import InputError

if TYPE_CHECKING:
    from recbuild.ml.predictor.plan import InputPlan

_PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


@dataclass
class ParquetInput:
    """Concrete parquet files (sorted) and the filesystem that opens them (None = local)."""

    paths: list[str]
    filesystem: Any = None
    # each file's footer, read on its first opening: the validation, the id pass and the
    # prediction pass open every file, and on a remote store each footer read is a request
    footers: dict[str, pq.FileMetaData] = field(default_factory=dict, repr=False, compare=False)

    def open(self, path: str) -> pq.ParquetFile:
        try:
            where = path if self.filesystem is None else self.filesystem.open_input_file(path)
            opened = pq.ParquetFile(where, metadata=self.footers.get(path))
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{path}: cannot read it as parquet ({exc})") from None
        self.footers.setdefault(path, opened.metadata)
        return opened


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def _keep_data_files(paths: Sequence[str]) -> list[str]:
    """Drop bookkeeping files (MANIFEST.json, _SUCCESS, .hidden); prefer *.parquet when present."""
    candidates = [p for p in paths
                  if not Path(p).name.startswith((".", "_")) and Path(p).name != "MANIFEST.json"]
    parquet = [p for p in candidates if p.lower().endswith(_PARQUET_SUFFIXES)]
    return sorted(parquet or candidates)


def resolve_parquet_input(locations: str | Path | Sequence[str | Path]) -> ParquetInput:
    """Files from paths, directories, globs or fsspec URLs (``memory://``, ``s3://`` ...)."""
    if isinstance(locations, (str, Path)):
        locations = [locations]
    locations = [str(x) for x in locations]
    if not locations:
        raise InputError("no parquet input given")
    if any(_is_url(x) for x in locations):
        import fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        fs, _ = fsspec.core.url_to_fs(locations[0])
        paths: list[str] = []
        for location in locations:
            _, path = fsspec.core.url_to_fs(location)
            if any(ch in path for ch in "*?["):
                paths.extend(fs.glob(path))
            elif fs.isdir(path):
                paths.extend(p for p in fs.find(path))
            elif fs.exists(path):
                paths.append(path)
            else:
                raise InputError(f"{location} does not exist")
        files = _keep_data_files(paths)
        if not files:
            raise InputError(f"no parquet files under {', '.join(locations)}")
        return ParquetInput(files, PyFileSystem(FSSpecHandler(fs)))
    import glob as globmod

    paths = []
    for location in locations:
        location = location.removeprefix("file://")
        p = Path(location)
        if any(ch in location for ch in "*?["):
            paths.extend(x for x in globmod.glob(location, recursive=True) if Path(x).is_file())
        elif p.is_dir():
            paths.extend(str(x) for x in p.rglob("*") if x.is_file())
        elif p.is_file():
            paths.append(str(p))
        else:
            raise InputError(f"{location} does not exist")
    files = _keep_data_files(paths)
    if not files:
        raise InputError(f"no parquet files in {', '.join(locations)}")
    return ParquetInput(files)


def filtered_batches(source: ParquetInput, plan: InputPlan, batch_size: int
                     ) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """Input batches in order with dropped duplicate rows removed, plus their global row numbers."""
    offset = 0
    drop = plan.drop_rows
    for path in plan.files:
        pf = source.open(path)
        # use_threads=False: decoding stays on the reader thread, off the cores torch computes on.
        for batch in file_batches(pf, batch_size, plan.read_columns, use_threads=False):
            rows = np.arange(offset, offset + batch.num_rows, dtype=np.int64)
            offset += batch.num_rows
            if len(drop):
                lo, hi = np.searchsorted(drop, [rows[0], rows[-1] + 1]) if len(rows) else (0, 0)
                if hi > lo:
                    keep = np.ones(len(rows), dtype=bool)
                    keep[drop[lo:hi] - rows[0]] = False
                    batch, rows = batch.filter(pa.array(keep)), rows[keep]
            if batch.num_rows:
                yield batch, rows
