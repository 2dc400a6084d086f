"""The sparse/dense split export (RecIS style): embedding tables as parquet, the dense rest as an
exported module, verified end to end against the eager full model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from recbuild.errors import BuildError
from recbuild.ml.exporter.formats import FORMAT_FILES, load_format, write_formats

EXPORT_BATCH = 4  # batch size of the tracing example; the batch dim is exported as dynamic
VERIFY_BATCH = 7  # a different size, so verification also exercises the dynamic batch dim


def _write_table(table, path: Path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    weight = table.weight.detach().float().contiguous().numpy()
    buckets, dim = weight.shape
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(weight.reshape(-1), type=pa.float32()), dim)
    data = pa.table({"id": pa.array(np.arange(buckets, dtype=np.int64)), "vector": vectors})
    with pq.ParquetWriter(str(path), data.schema, use_dictionary=False, compression="snappy",
                          write_statistics=True) as writer:
        writer.write_table(data, row_group_size=65536)


def _read_tables(folder: Path, tables):
    """The tables as written (parquet), so verification covers the files, not the weights in memory."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from recbuild.ml.models.split import SparseTable

    loaded = []
    for table in tables:
        data = pq.read_table(str(folder / f"{table.name}.parquet"))
        flat = data.column("vector").combine_chunks().flatten().to_numpy()
        weight = torch.from_numpy(np.array(flat, dtype=np.float32).reshape(data.num_rows, -1))
        loaded.append(SparseTable(table.name, table.spec, weight))
    return loaded


def write_sparse_dense(model, specs, folder: Path, formats: Iterable[str], tolerance: float) -> dict[str, float]:
    """sparse/<table>.parquet (id = row, vector) + sparse/tables.json + dense/ (exported dense module).

    Verified end to end: raw inputs -> lookups in the parquet tables -> loaded dense module, against
    the eager full model. Returns max_abs_diff per format under "sparse_dense/<format>".
    """
    import torch

    from recbuild.ml.models.features import example_inputs
    from recbuild.ml.models.split import SplitNotSupported, lookup_fields, sparse_dense_parts

    try:
        tables, dense, dense_inputs = sparse_dense_parts(model, specs)
    except SplitNotSupported as exc:
        raise BuildError(str(exc)) from None
    sparse_dir, dense_dir = Path(folder) / "sparse", Path(folder) / "dense"
    sparse_dir.mkdir()
    dense_dir.mkdir()
    for table in tables:
        _write_table(table, sparse_dir / f"{table.name}.parquet")
    described = [{"table": t.name, "feature": t.spec.name, "column": t.spec.column, "group": t.spec.group,
                  "type": t.spec.type, "value_type": t.spec.value_type, "buckets": int(t.weight.shape[0]),
                  "dim": int(t.weight.shape[1]), "pooling": "mean" if t.spec.type == "sequence" else "none",
                  "row": "(splitmix64_finaliser(id) & (2**63 - 1)) % buckets; id -1 is padding"} for t in tables]
    (sparse_dir / "tables.json").write_text(json.dumps({"tables": described}, indent=2) + "\n")
    (dense_dir / "inputs.json").write_text(json.dumps(
        {"inputs": [{"name": i.name, "kind": i.kind, "dim": i.dim, "feature": i.feature} for i in dense_inputs]},
        indent=2) + "\n")
    numeric = [i.name for i in dense_inputs if i.kind == "numeric"]
    formats = list(formats)
    write_formats(dense, lookup_fields(tables, example_inputs(specs, EXPORT_BATCH, seed=0), numeric),
                  dense_dir, formats)
    raw = example_inputs(specs, VERIFY_BATCH, seed=1)
    fields = lookup_fields(_read_tables(sparse_dir, tables), raw, numeric)
    with torch.no_grad():
        expected = model(raw)
    diffs = {}
    for fmt in formats:
        with torch.no_grad():
            got = load_format(dense_dir, fmt)(dict(fields))
        diff = max(float((got[k].double() - expected[k].double()).abs().max()) for k in expected)
        if not diff <= tolerance:
            raise BuildError(f"sparse_dense: tables + dense/{FORMAT_FILES[fmt]} differ from the eager "
                             f"model by {diff:.3g} (tolerance {tolerance:g})")
        diffs[f"sparse_dense/{fmt}"] = diff
    return diffs
