"""`kind: faiss_index` — a FAISS index over an embedding table, plus id_mapping and index_meta.json.

Output (TorchEasyRec's names, tzrec_formats.md section 3.1):
  faiss_index      faiss.write_index of the index (byte-identical for the same input and params)
  id_mapping       line i = item id of faiss id i, no header
  index_meta.json  {type, metric, dim, count, params, ...}, sorted keys

The work lives in :mod:`recbuild.retrieval.faiss_index`; this module maps params and errors.
"""

from __future__ import annotations

from typing import Any

import math

from recbuild.builders.base import BuildContext, Builder
from recbuild.errors import BuildError
from recbuild.retrieval.memory import budget_schema

_POSITIVE = {"type": "integer", "minimum": 1}


def auto_nlist(count: int) -> int:
    """About sqrt(rows) lists, but at least 39 training points per list (faiss warns below that)."""
    return max(1, min(int(round(math.sqrt(count))), count // 39))


def auto_pq_m(dim: int) -> int:
    """The largest divisor of dim that is at most dim/4 (16 sub-quantizers for 64-d)."""
    limit = max(1, dim // 4)
    return max(d for d in range(1, limit + 1) if dim % d == 0)


class FaissIndexBuilder(Builder):
    kind = "faiss_index"
    version = "1"
    toolchain = ("faiss", "numpy", "machine")
    description = "FAISS index (Flat, IVFFlat, HNSWFlat, IVFPQ) over item embeddings, with id_mapping"
    reference_fields = ("embeddings",)
    schema = {
        "type": "object",
        "properties": {
            "embeddings": {"type": "string", "description": "item embeddings artifact (or parquet source)"},
            "index_type": {"enum": ["Flat", "IVFFlat", "HNSWFlat", "IVFPQ"], "default": "IVFFlat"},
            "metric": {"enum": ["ip", "l2"], "default": "ip",
                       "description": "ip = inner product (cosine for L2-normalised towers), l2 = euclidean"},
            "nlist": {"oneOf": [_POSITIVE, {"type": "null"}], "default": None,
                      "description": "IVF lists; default about sqrt(rows)"},
            "m": {"oneOf": [_POSITIVE, {"type": "null"}], "default": None,
                  "description": "IVFPQ sub-quantizers, must divide dim; default: largest divisor <= dim/4"},
            "nbits": {"type": "integer", "minimum": 1, "maximum": 16, "default": 8,
                      "description": "IVFPQ bits per code"},
            "M": {"type": "integer", "minimum": 2, "default": 32, "description": "HNSW graph degree"},
            "ef_construction": {"type": "integer", "minimum": 1, "default": 200},
            "nprobe": {"type": "integer", "minimum": 1, "default": 32,
                       "description": "IVF lists probed at search; stored in the index as its default"},
            "ef_search": {"type": "integer", "minimum": 1, "default": 64,
                          "description": "HNSW search breadth; stored in the index as its default"},
            "train_size": {"oneOf": [_POSITIVE, {"type": "null"}], "default": None,
                           "description": "IVF training sample (seeded); default 256 per list, as faiss"},
            "seed": {"type": "integer", "minimum": 0, "default": 42},
            "id_column": {"type": "string", "default": "item_id"},
            "embedding_column": {"type": "string", "default": "item_tower_emb"},
            "batch_size": {"type": "integer", "minimum": 1, "default": 65536,
                           "description": "rows read and added per step (bounds memory)"},
            "allow_duplicate_ids": {"type": "boolean", "default": False},
            "memory_budget": budget_schema(
                "memory of the build: an IVF training sample shrinks to fit, an index that cannot fit is "
                "refused before any work"),
        },
        "required": ["embeddings"],
    }

    @classmethod
    def key_facts(cls, params: dict[str, Any]) -> dict[str, Any]:
        from recbuild.retrieval.memory import budget_fact

        # the IVF training sample shrinks to fit the budget; Flat and HNSW only refuse over it
        return budget_fact(params.get("memory_budget")) if params["index_type"].startswith("IVF") else {}

    def check(self, params):
        problems = []
        index_type = params["index_type"]
        if index_type in ("Flat", "HNSWFlat"):
            for key in ("nlist", "train_size"):  # (nprobe has a default, so it cannot be told apart)
                if params.get(key) is not None:
                    problems.append((key, f"applies to IVFFlat/IVFPQ only, not {index_type}"))
        if index_type != "IVFPQ" and params.get("m") is not None:
            problems.append(("m", f"applies to IVFPQ only, not {index_type}"))
        return problems

    def build(self, ctx: BuildContext) -> None:
        from recbuild.retrieval.embeddings_io import EmbeddingTable
        from recbuild.retrieval.faiss_checks import check_training
        from recbuild.retrieval.faiss_index import IndexSpec, build_index
        from recbuild.retrieval.memory import parse_budget

        p = ctx.params
        for path, message in self.check(p):
            raise BuildError(f"{path}: {message}")
        source = ctx.input("embeddings")
        table = EmbeddingTable(source, p["id_column"], p["embedding_column"],
                               where=f"embeddings {source.name!r}")
        index_type = p["index_type"]
        nlist = p.get("nlist") or auto_nlist(table.num_rows)
        m = p.get("m")
        if index_type == "IVFPQ" and m is None:
            dim = _first_dim(table)
            m = auto_pq_m(dim)
        spec = IndexSpec(
            index_type=index_type, metric=p["metric"], nlist=nlist, m=m or 16,
            nbits=p["nbits"], hnsw_m=p["M"], ef_construction=p["ef_construction"],
            nprobe=p["nprobe"], ef_search=p["ef_search"], train_size=p.get("train_size"),
            seed=p["seed"])
        for advice in check_training(spec, table.num_rows):  # before reading a vector or training
            ctx.warn(advice)
        result = build_index(table, spec, ctx.out, batch_rows=p["batch_size"],
                             threads=ctx.threads, allow_duplicate_ids=p["allow_duplicate_ids"],
                             progress=ctx.progress(table.num_rows, "rows", "checking ids"),
                             budget=parse_budget(p["memory_budget"], f"faiss_index {ctx.name}: memory_budget"))
        ctx.meta.update({"type": index_type, "metric": spec.metric, "dim": result.dim,
                         "count": result.count})
        ctx.log.info("faiss_index %s: %d x %d (%s, %s)", ctx.name, result.count, result.dim, index_type,
                     spec.metric)


def _first_dim(table) -> int:
    for part in table.batches(batch_rows=1):
        return part.vectors.shape[1]
    raise BuildError("empty embedding table")
