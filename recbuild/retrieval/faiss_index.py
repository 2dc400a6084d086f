"""Build, write and search FAISS indexes, deterministically and with bounded memory.

The build streams the embedding table twice at most: once to collect a seeded training sample
(IVF types only), once to add every vector in record batches. Only the sample and one batch are in
memory, besides the index itself.

Determinism (same table + same params => byte-identical ``faiss_index``):
  - the training sample is a seeded choice of row positions, known before reading (row counts come
    from parquet metadata);
  - faiss k-means is seeded (``ClusteringParameters.seed``, for the coarse quantizer and the PQ);
  - IVF add is deterministic with any thread count (each list is filled in id order);
  - HNSW add is deterministic with any thread count from faiss 1.15 on: its ``add()`` builds the
    graph in batches against a frozen snapshot and merges reverse links in a fixed order
    (``faiss.hnsw_add_vertices_deterministic``, after ParlayANN). pyproject requires that faiss,
    and tests/test_faiss_index.py checks 1 and 2 threads give the same bytes.

``faiss.cvar.distance_compute_blas_threshold`` is lowered wherever we search (see
:func:`tune_blas_threshold`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recbuild.errors import BuildError, InputError
from recbuild.retrieval.faiss_checks import quiet_clustering
from recbuild.retrieval.embeddings_io import EmbeddingTable, id_strings, write_lines
from recbuild.retrieval.threads import threads_for_load

INDEX_TYPES = ("Flat", "IVFFlat", "HNSWFlat", "IVFPQ")
METRICS = ("ip", "l2")
INDEX_FILE = "faiss_index"
ID_MAPPING_FILE = "id_mapping"
META_FILE = "index_meta.json"
# faiss trains k-means on at most this many points per centroid; a larger sample is wasted reading.
POINTS_PER_CENTROID = 256


@dataclass(frozen=True)
class IndexSpec:
    index_type: str = "IVFFlat"
    metric: str = "ip"
    nlist: int = 1024  # IVF*: coarse clusters
    m: int = 16  # IVFPQ: sub-quantizers (must divide dim)
    nbits: int = 8  # IVFPQ: bits per sub-quantizer code
    hnsw_m: int = 32  # HNSWFlat: graph degree M
    ef_construction: int = 200  # HNSWFlat
    nprobe: int = 16  # IVF*: default lists probed at search, stored in the index
    ef_search: int = 64  # HNSWFlat: default search breadth, stored in the index
    train_size: int | None = None  # IVF*: training sample rows; None = what faiss would use
    seed: int = 42

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise BuildError(f"index_type must be one of {', '.join(INDEX_TYPES)}, got {self.index_type!r}")
        if self.metric not in METRICS:
            raise BuildError(f"metric must be ip or l2, got {self.metric!r}")

    @property
    def is_ivf(self) -> bool:
        return self.index_type in ("IVFFlat", "IVFPQ")

    def resolved_train_size(self, count: int) -> int:
        if not self.is_ivf:
            return 0
        if self.train_size is not None:
            return min(self.train_size, count)
        wanted = POINTS_PER_CENTROID * self.nlist
        if self.index_type == "IVFPQ":
            wanted = max(wanted, POINTS_PER_CENTROID * (1 << self.nbits))
        return min(wanted, count)

    def used_params(self) -> dict[str, Any]:
        """The params that shape this index type (for index_meta.json)."""
        keys = {"Flat": (), "IVFFlat": ("nlist", "nprobe"), "IVFPQ": ("nlist", "nprobe", "m", "nbits"),
                "HNSWFlat": ("hnsw_m", "ef_construction", "ef_search")}[self.index_type]
        params = {k: v for k, v in asdict(self).items() if k in keys}
        if self.is_ivf:
            params["seed"] = self.seed
        return params


def tune_blas_threshold(dim: int) -> None:
    """Let faiss use BLAS from 20 queries on (faiss 1.15's default waits for 2000 at d=64).

    On this 2-core class of machine the default makes batched flat/IVF search about 10x slower
    (perf_baselines.md section 3). The threshold is in units of nq * d.
    """
    import faiss

    faiss.cvar.distance_compute_blas_threshold = 20 * max(int(dim), 1)


def _faiss_metric(metric: str):
    import faiss

    return faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2


def new_index(spec: IndexSpec, dim: int):
    """An empty (untrained) faiss index for ``spec``, with seeded clustering."""
    import faiss

    metric = _faiss_metric(spec.metric)
    if spec.index_type == "Flat":
        return faiss.IndexFlatIP(dim) if spec.metric == "ip" else faiss.IndexFlatL2(dim)
    if spec.index_type == "HNSWFlat":
        index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, metric)
        index.hnsw.efConstruction = spec.ef_construction
        index.hnsw.efSearch = spec.ef_search
        return index
    quantizer = faiss.IndexFlatIP(dim) if spec.metric == "ip" else faiss.IndexFlatL2(dim)
    if spec.index_type == "IVFFlat":
        index = faiss.IndexIVFFlat(quantizer, dim, spec.nlist, metric)
    else:
        if dim % spec.m:
            raise InputError(f"IVFPQ: m={spec.m} must divide the embedding dimension {dim}; "
                             f"pick m among {[d for d in range(1, dim + 1) if dim % d == 0]}")
        index = faiss.IndexIVFPQ(quantizer, dim, spec.nlist, spec.m, spec.nbits, metric)
        index.pq.cp.seed = spec.seed
    # (faiss's Python wrapper keeps a reference to the quantizer inside the index object.)
    index.cp.seed = spec.seed
    quiet_clustering(index)
    index.nprobe = min(spec.nprobe, spec.nlist)
    return index


def sample_positions(count: int, size: int, seed: int) -> np.ndarray:
    """Sorted, seeded choice of ``size`` distinct row positions out of ``count``."""
    if size >= count:
        return np.arange(count, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(count, size=size, replace=False)).astype(np.int64)


@dataclass
class BuildResult:
    dim: int
    count: int
    train_size: int


class _ThreadLimit:
    """Temporarily cap faiss's OpenMP threads (restored on exit)."""

    def __init__(self, threads: int | None):
        self.threads = threads
        self.previous = None

    def __enter__(self):
        import faiss

        if self.threads:
            self.previous = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(self.threads)
        return self

    def __exit__(self, *exc):
        import faiss

        if self.previous is not None:
            faiss.omp_set_num_threads(self.previous)


def index_bytes(spec: IndexSpec, count: int, dim: int) -> int:
    """What the finished index takes in memory (faiss keeps all of it there while adding)."""
    per_vector = {"Flat": 4 * dim, "IVFFlat": 4 * dim + 8,
                  "IVFPQ": (spec.m * spec.nbits + 7) // 8 + 8,
                  # level 0 holds 2M links, the upper levels about M/(M-1) of that again, 4 bytes each
                  "HNSWFlat": 4 * dim + 4 * 2 * spec.hnsw_m * 2 + 16}[spec.index_type]
    fixed = 4 * dim * spec.nlist if spec.is_ivf else 0
    if spec.index_type == "IVFPQ":
        fixed += 4 * dim * (1 << spec.nbits)
    return count * per_vector + fixed


def fit_budget(spec: IndexSpec, count: int, dim: int, budget: int | None) -> int:
    """The training sample's rows within ``budget`` (bytes; None: no limit), or an InputError when
    the index itself cannot fit: types that keep every vector say so before any work."""
    from recbuild.retrieval.memory import format_bytes

    train_size = spec.resolved_train_size(count)
    if budget is None:
        return train_size
    needed = index_bytes(spec, count, dim)
    if needed > budget:
        hint = "use IVFPQ (its codes take a few bytes a vector) or raise memory_budget" \
            if spec.index_type != "IVFPQ" else "lower m / nbits or raise memory_budget"
        raise InputError(f"a {spec.index_type} index of {count:,} x {dim} vectors takes about "
                         f"{format_bytes(needed)} in memory, over memory_budget ({format_bytes(budget)}); {hint}")
    if spec.is_ivf:
        # the sample and the index being trained share the budget; faiss copies the sample once
        room = max(budget - needed, 0) // (2 * 4 * dim)
        train_size = min(train_size, max(room, spec.nlist))
    return train_size


def build_index(table: EmbeddingTable, spec: IndexSpec, out_dir: Path, *, batch_rows: int = 65536,
                threads: int | None = None, allow_duplicate_ids: bool = False,
                progress=None, budget: int | None = None) -> BuildResult:
    """Build the index of ``table`` into ``out_dir`` (faiss_index, id_mapping, index_meta.json).
    ``progress`` (optional) is told its phases (``phase(name, total, unit)``) and ``advance(rows)``.
    ``budget``: bytes the build may hold (the index, the training sample, one batch); a type that
    keeps every vector and does not fit is refused up front, an IVF sample is cut to fit."""
    import faiss

    count = table.num_rows
    if spec.is_ivf and spec.nlist > count:
        raise InputError(f"nlist={spec.nlist} is larger than the table ({count} rows); "
                         f"use nlist <= {count} (about sqrt(rows) = {max(1, int(count ** 0.5))} is usual)")
    train_size = spec.resolved_train_size(count)
    if budget is not None:
        train_size = fit_budget(spec, count, first_dim(table), budget)
    if spec.is_ivf and train_size < spec.nlist:
        raise InputError(f"train_size={train_size} is smaller than nlist={spec.nlist}; "
                         "k-means needs at least one training point per list")

    check_ids_before_work(table, allow_duplicate_ids)
    threads = threads_for_load(threads)  # speed only: see recbuild/retrieval/threads.py
    index = None
    dim = None
    if spec.is_ivf:
        if progress:
            progress.phase(f"training {spec.index_type} ({spec.nlist:,} lists)", train_size, "rows")
        positions = sample_positions(count, train_size, spec.seed)
        sample = table.vectors_at(positions, batch_rows)
        dim = sample.shape[1]
        index = new_index(spec, dim)
        tune_blas_threshold(dim)
        with _ThreadLimit(threads):
            index.train(sample)
        if progress:
            progress.advance(train_size)
        del sample

    out_dir = Path(out_dir)
    if progress:
        progress.phase("adding vectors", count, "rows")
    with open(out_dir / ID_MAPPING_FILE, "wb") as mapping, _ThreadLimit(threads):
        for part in table.batches(batch_rows, dim=dim):
            if index is None:
                dim = part.vectors.shape[1]
                index = new_index(spec, dim)
                tune_blas_threshold(dim)
            index.add(part.vectors)
            write_lines(mapping, id_strings(part.ids))
            if progress:
                progress.advance(len(part.vectors))
    assert index is not None and index.ntotal == count

    if progress:
        progress.phase("writing")
    faiss.write_index(index, str(out_dir / INDEX_FILE))
    meta = {
        "type": spec.index_type,
        "metric": spec.metric,
        "dim": int(dim),
        "count": int(count),
        "params": spec.used_params(),
        "train_size": int(train_size),
        "id_column": table.id_column,
        "embedding_column": table.embedding_column,
        "faiss_version": faiss.__version__,
    }
    write_json(out_dir / META_FILE, meta)
    return BuildResult(int(dim), int(count), int(train_size))


def first_dim(table: EmbeddingTable) -> int:
    """The dimension of the table's vectors (from its first row)."""
    for part in table.batches(batch_rows=1):
        return int(part.vectors.shape[1])
    raise InputError(f"{table.where}: the table has no rows")


def check_ids_before_work(table: EmbeddingTable, allow_duplicate_ids: bool) -> None:
    """One pass over the id column only (cheap next to the vectors): nulls, line breaks (id_mapping
    holds one id per line) and, unless allowed, duplicate ids - all before any training or adding."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from recbuild.retrieval.embeddings_io import check_ids, iter_batches

    keys = []
    for offset, batch in iter_batches(table.info, [table.id_column]):
        ids = batch.column(0)
        check_ids(ids, table.where, offset)
        text = id_strings(ids)
        if pc.any(pc.match_substring_regex(text, "[\r\n]")).as_py():
            raise InputError(f"{table.where}: an id contains a line break; id_mapping holds one id per line")
        if not allow_duplicate_ids:
            keys.append(_id_keys(ids))
    if allow_duplicate_ids or not keys:
        return
    keys_all = np.concatenate(keys)
    del keys
    # First a sort in place and a comparison of neighbours (8 bytes a row); the 8-byte order that
    # finds the rows is computed only when some key repeats.
    from recbuild.common.ids import sorted_has_repeats

    sorted_keys = keys_all.copy()
    sorted_keys.sort()
    repeats = sorted_has_repeats(sorted_keys)
    del sorted_keys
    if not repeats:
        return
    order = np.argsort(keys_all, kind="stable")
    same = np.nonzero(keys_all[order[1:]] == keys_all[order[:-1]])[0]
    del keys_all
    # Keys of string ids are 63-bit hashes: confirm a duplicate on the ids themselves (only the
    # candidate rows' text is read back, not every id's).
    pairs = [(int(order[j]), int(order[j + 1])) for j in same[:1000]]
    del order
    wanted = np.unique(np.array(pairs, dtype=np.int64).reshape(-1))
    text_of = {}
    for offset, batch in iter_batches(table.info, [table.id_column]):
        a, b = np.searchsorted(wanted, [offset, offset + batch.num_rows])
        if b > a:
            picked = id_strings(batch.column(0)).take(pa.array(wanted[a:b] - offset)).to_pylist()
            text_of.update(zip(wanted[a:b].tolist(), picked))
    examples = []
    for a, b in pairs:
        a, b = min(a, b), max(a, b)
        if text_of[a] == text_of[b]:
            examples.append(f"{text_of[a]!r} at rows {a} and {b}")
        if len(examples) == 3:
            break
    if examples:
        raise InputError(f"{table.where}: duplicate item ids ({'; '.join(examples)}); an id must map to one "
                         "vector (set allow_duplicate_ids: true to keep them, as TorchEasyRec does)")


def _id_keys(ids) -> np.ndarray:
    """int64 keys to find duplicate ids cheaply: the ids themselves, or a 63-bit hash of strings."""
    import pyarrow as pa

    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    if pa.types.is_integer(ids.type):
        return ids.cast(pa.int64()).to_numpy(zero_copy_only=False)
    from recbuild.common.ids import hash_string_ids

    return hash_string_ids(ids.cast(pa.string()))


def write_json(path: Path, doc: Any) -> None:
    Path(path).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# -- reading and searching ---------------------------------------------------------------------
def read_json(path: Path, missing: str) -> Any:
    """A JSON file we wrote; ``missing`` says what its absence means."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path} not found: {missing}") from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
        raise InputError(f"{path} is not valid JSON ({str(exc)[:100]}); rebuild it") from None


def read_meta(folder: Path) -> dict[str, Any]:
    """index_meta.json of a faiss_index artifact; for a folder holding only faiss_index and id_mapping
    (as TorchEasyRec's create_faiss_index writes them), the same facts read from the index itself."""
    folder = Path(folder)
    if not (folder / META_FILE).is_file() and (folder / INDEX_FILE).is_file():
        return describe_index(read_index(folder / INDEX_FILE, mmap=True))
    return read_json(folder / META_FILE, "the input is not a faiss_index artifact")


def describe_index(index) -> dict[str, Any]:
    """index_meta.json's facts of a loaded index (type, metric, dim, count, params)."""
    import faiss

    kind = index_kind(index)
    params: dict[str, Any] = {}
    if kind in ("IVFFlat", "IVFPQ"):
        params.update({"nlist": int(index.nlist), "nprobe": int(index.nprobe)})
        if kind == "IVFPQ":
            params.update({"m": int(index.pq.M), "nbits": int(index.pq.nbits)})
    elif kind == "HNSWFlat":
        params.update({"hnsw_m": int(index.hnsw.nb_neighbors(1)), "ef_construction": int(index.hnsw.efConstruction),
                       "ef_search": int(index.hnsw.efSearch)})
    metric = "ip" if index.metric_type == faiss.METRIC_INNER_PRODUCT else \
        "l2" if index.metric_type == faiss.METRIC_L2 else str(index.metric_type)
    return {"type": kind, "metric": metric, "dim": int(index.d), "count": int(index.ntotal),
            "params": params}


class IdMapping:
    """The lines of id_mapping (line i = item id of faiss id i), read from the file a chunk at a
    time, never all at once: a 20M-item catalogue's ids would take about 16 bytes each as arrow
    strings. ``take`` scans the file once per call (for the few thousand ids a search returns);
    ``equals_slice`` reads on from where its last call stopped (an in-order pass costs one read);
    the line count and the UTF-8 check are one pass, made on opening (``read_id_mapping``)."""

    def __init__(self, path: Path, chunk_bytes: int = 1 << 23):
        self.path = Path(path)
        self.chunk_bytes = chunk_bytes
        self._length: int | None = None
        self._reader = None  # (iterator of chunks, first line held, strings held) for equals_slice

    def __len__(self) -> int:
        if self._length is None:
            self._length = sum(len(strings) for _, strings in self.chunks())
        return self._length

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.take(np.array([int(key)]))[0]
        return self.take(np.asarray(key))

    def chunks(self):
        """(number of the first line, its lines as a pyarrow LargeStringArray), in file order."""
        carry = b""
        first = 0
        with open(self.path, "rb") as fh:
            while chunk := fh.read(self.chunk_bytes):
                data = carry + chunk
                cut = data.rfind(b"\n") + 1
                carry = data[cut:]
                if cut:
                    strings = self._lines(data[:cut])
                    yield first, strings
                    first += len(strings)
        if carry:  # a last line without its newline counts too
            yield first, self._lines(carry + b"\n")

    def _lines(self, block: bytes):
        """The lines of ``block`` (which ends with a newline): its bytes without the newlines and an
        offset per line, no Python str per id."""
        import pyarrow as pa

        data = np.frombuffer(block, dtype=np.uint8)
        breaks = np.flatnonzero(data == 10)
        offsets = np.empty(len(breaks) + 1, dtype=np.int64)
        offsets[0] = 0
        offsets[1:] = breaks - np.arange(len(breaks))  # line i ends before its newline, less i newlines
        strings = pa.LargeStringArray.from_buffers(len(breaks), pa.py_buffer(offsets),
                                                   pa.py_buffer(data[data != 10]))
        try:
            strings.validate(full=True)
        except pa.ArrowInvalid:
            raise InputError(f"{self.path} is not UTF-8 text (one item id per line); rebuild the index") from None
        return strings

    def tolist(self) -> list[str]:
        """Every id as a Python str (a whole catalogue's worth: for small indexes only)."""
        return [s for _, strings in self.chunks() for s in strings.to_pylist()]

    def members(self, candidates) -> set[str]:
        """Those of ``candidates`` (item id strings) that are lines of the file, in one pass."""
        import pyarrow as pa
        import pyarrow.compute as pc

        wanted = pa.array(sorted(candidates), type=pa.large_string())
        found: set[str] = set()
        for _, strings in (self.chunks() if len(wanted) else ()):
            found.update(strings.filter(pc.is_in(strings, value_set=wanted)).to_pylist())
        return found

    def take(self, faiss_ids: np.ndarray) -> np.ndarray:
        """Item id strings of ``faiss_ids`` (any shape; None where the id is -1)."""
        import pyarrow as pa

        faiss_ids = np.asarray(faiss_ids, dtype=np.int64)
        flat = faiss_ids.reshape(-1)
        valid = flat >= 0
        wanted = np.unique(flat[valid])
        found = np.empty(len(wanted), dtype=object)
        done = 0
        for first, strings in (self.chunks() if len(wanted) else ()):
            end = int(np.searchsorted(wanted, first + len(strings)))
            if end > done:
                found[done:end] = strings.take(pa.array(wanted[done:end] - first)).to_numpy(zero_copy_only=False)
                done = end
            if done == len(wanted):
                break
        if done < len(wanted):
            raise InputError(f"{self.path}: no line {int(wanted[done])}; the index and its id_mapping "
                             "disagree: rebuild the index")
        out = np.empty(len(flat), dtype=object)
        out[valid] = found[np.searchsorted(wanted, flat[valid])]
        return out.reshape(faiss_ids.shape)

    def equals_slice(self, offset: int, strings) -> bool:
        """Whether lines ``offset ..`` are exactly ``strings`` (a pyarrow string array)."""
        import pyarrow as pa

        if self._reader is None or offset < self._reader[1]:
            self._reader = (self.chunks(), 0, pa.array([], type=pa.large_string()))
        chunks, first, held = self._reader
        while first + len(held) < offset + len(strings):
            try:
                _, more = next(chunks)
            except StopIteration:
                break
            held = pa.concat_arrays([held, more])
            drop = min(max(0, offset - first), len(held))  # lines before offset are never asked again
            held, first = held.slice(drop), first + drop
        self._reader = (chunks, first, held)
        part = held.slice(offset - first, len(strings))
        return len(part) == len(strings) and part.equals(strings.cast(part.type))


def read_id_mapping(path: Path, chunk_bytes: int = 1 << 23) -> IdMapping:
    """id_mapping, counted and checked as UTF-8 in one pass (``IdMapping`` reads it on demand)."""
    ids = IdMapping(path, chunk_bytes)
    len(ids)
    return ids


def load_index(folder: Path, mmap: bool = False):
    """(faiss index, IdMapping) of a folder holding faiss_index and id_mapping. ``mmap``: map the
    index file instead of reading it into memory, where faiss can (the inverted lists of IVF
    indexes, the codes of flat ones); other types are read as usual."""
    folder = Path(folder)
    for name in (INDEX_FILE, ID_MAPPING_FILE):
        if not (folder / name).is_file():
            raise InputError(f"{folder / name} not found: expected a faiss_index artifact or bundle")
    index = read_index(folder / INDEX_FILE, mmap)
    ids = read_id_mapping(folder / ID_MAPPING_FILE)
    if len(ids) != index.ntotal:
        raise InputError(f"{folder}: id_mapping has {len(ids)} lines but the index holds "
                         f"{index.ntotal} vectors; rebuild the index")
    return index, ids


def _mmap_flags(path: Path) -> int:
    """faiss maps the codes of flat storage (Flat, and HNSW's) with IO_FLAG_MMAP_IFC, the inverted
    lists of IVF indexes with IO_FLAG_MMAP; the two do not combine, so the file's type decides."""
    import faiss

    with open(path, "rb") as fh:
        fourcc = fh.read(4)
    if fourcc.startswith((b"IxF", b"IHN")):
        return getattr(faiss, "IO_FLAG_MMAP_IFC", 0)
    return faiss.IO_FLAG_MMAP


def read_index(path: Path, mmap: bool = False):
    """faiss.read_index, with a clear error for a file that is not an index; ``mmap`` as load_index."""
    import faiss

    flags = _mmap_flags(path) if mmap else 0
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError as exc:  # truncated or not a faiss index: faiss raises its own error text
        if mmap:  # a type faiss cannot map: read it the usual way (and report its error, if any)
            return read_index(path, False)
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else "unreadable"
        raise InputError(f"{path} is not a readable faiss index ({first}); rebuild it") from None


def index_kind(index) -> str:
    """faiss class -> our type name (the index may have been loaded from disk)."""
    import faiss

    for cls, name in ((faiss.IndexIVFPQ, "IVFPQ"), (faiss.IndexIVFFlat, "IVFFlat"),
                      (faiss.IndexHNSWFlat, "HNSWFlat"), (faiss.IndexFlat, "Flat")):
        if isinstance(index, cls):
            return name
    return type(index).__name__


def set_search_params(index, nprobe: int | None = None, ef_search: int | None = None) -> None:
    import faiss

    if nprobe is not None and isinstance(index, faiss.IndexIVF):
        index.nprobe = min(int(nprobe), index.nlist)
    if ef_search is not None and isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = int(ef_search)


def search(index, queries: np.ndarray, k: int, nprobe: int | None = None,
           ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, faiss ids) of the top ``k``; ids are -1 where fewer than k results exist."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != index.d:
        raise InputError(f"query vectors have shape {queries.shape}, the index expects dimension {index.d}")
    set_search_params(index, nprobe, ef_search)
    tune_blas_threshold(index.d)
    return index.search(queries, int(k))


def vectors_of(index) -> np.ndarray | None:
    """Every stored vector, exactly, when the index keeps them uncompressed (Flat, IVFFlat, HNSWFlat).

    Returns None for IVFPQ (its reconstructions are lossy, so no exact baseline from them).
    """
    import faiss

    kind = index_kind(index)
    if kind == "IVFPQ":
        return None
    if kind == "IVFFlat":
        invlists = index.invlists
        out = np.empty((index.ntotal, index.d), dtype=np.float32)
        for list_no in range(index.nlist):
            size = invlists.list_size(list_no)
            if not size:
                continue
            ids = faiss.rev_swig_ptr(invlists.get_ids(list_no), size).copy()
            codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * index.code_size)
            out[ids] = np.frombuffer(codes.tobytes(), dtype=np.float32).reshape(size, index.d)
        return out
    return index.reconstruct_n(0, index.ntotal)


def iter_vectors(index, chunk_rows: int):
    """(vectors, faiss ids) in chunks of about ``chunk_rows``, exactly as stored, for indexes that keep
    them uncompressed (Flat, IVFFlat, HNSWFlat); None for IVFPQ (lossy codes). One chunk in memory."""
    import faiss

    kind = index_kind(index)
    if kind == "IVFPQ":
        return None

    def flat_chunks():
        for lo in range(0, index.ntotal, chunk_rows):
            n = min(chunk_rows, index.ntotal - lo)
            yield index.reconstruct_n(lo, n), np.arange(lo, lo + n, dtype=np.int64)

    def ivf_chunks():
        invlists = index.invlists
        vectors, ids, held = [], [], 0
        for list_no in range(index.nlist):
            size = invlists.list_size(list_no)
            if not size:
                continue
            ids.append(faiss.rev_swig_ptr(invlists.get_ids(list_no), size).copy())
            codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * index.code_size)
            vectors.append(np.frombuffer(codes.tobytes(), dtype=np.float32).reshape(size, index.d))
            held += size
            if held >= chunk_rows:
                yield np.concatenate(vectors), np.concatenate(ids)
                vectors, ids, held = [], [], 0
        if held:
            yield np.concatenate(vectors), np.concatenate(ids)

    return ivf_chunks() if kind == "IVFFlat" else flat_chunks()
