"""`kind: tdm_tree` — a TDM tree in TorchEasyRec's formats, all leaves on one level for any n_cluster.

mode init:    items ordered by (category, id), cut into contiguous slices (reference field `items`)
mode learnt:  balanced k-means over item embeddings, level by level (reference field `embeddings`)

Output: serving_tree, node_table.txt, edge_table.txt, predict_edge_table.txt,
node_feature/part-0.parquet (formats: recbuild/retrieval/tree_io/formats.py), and metrics.json (how evenly
the items spread: ``recbuild.retrieval.tdm_tree.balance``).
"""

from __future__ import annotations

from typing import Any

import json

from recbuild.builders.base import METRICS_FILE, BuildContext, Builder
from recbuild.errors import BuildError
from recbuild.retrieval.memory import budget_schema

_NAMES = {"type": "array", "items": {"type": "string"}, "default": []}


class TdmTreeBuilder(Builder):
    kind = "tdm_tree"
    uses_torch = True
    version = "3"  # 2: metrics.json; 3: learnt trees above memory_budget are built out of core
    toolchain = ("numpy", "pyarrow", "machine")
    description = "TDM tree (init by category, or learnt by balanced k-means) in TorchEasyRec's formats"
    reference_fields = ("items", "embeddings")
    headline = ("branch_balance", "levels")
    metric_docs = {
        "items": "items in the tree (one leaf each)",
        "levels": "levels including the root; every leaf is on the last one",
        "nodes": "nodes of all levels",
        "n_cluster": "branching factor k",
        "branch_leaves_min": "items under the root's smallest child",
        "branch_leaves_max": "items under the root's largest child",
        "branch_balance": "branch_leaves_min / branch_leaves_max: 1.0 = the root's children hold equal shares",
        "leaf_slot_fill": "items over the k^depth leaf slots of the last level (1.0 = a full tree)",
        "parent_children_mean": "children per node on the level above the leaves (k = no empty slot)",
        "out_of_core.cut_level": "learnt above memory_budget: levels cut by sample-trained centroids",
        "out_of_core.subtrees": "nodes of the cut level, each then built in memory",
        "out_of_core.max_subtree_items": "items of the largest of them",
        "out_of_core.sample_items": "items the cut levels' k-means was trained on",
    }
    schema = {
        "type": "object",
        "properties": {
            "mode": {"enum": ["init", "learnt"],
                     "description": "default: learnt when `embeddings` is given, init when `items` is"},
            "items": {"type": "string", "description": "init mode: item table (source or artifact)"},
            "embeddings": {"type": "string", "description": "learnt mode: item embeddings artifact"},
            "n_cluster": {"type": "integer", "minimum": 2, "default": 2,
                          "description": "branching factor; every leaf ends on the same level"},
            "item_id_column": {"type": "string", "default": "item_id"},
            "cate_id_column": {"type": "string", "default": "cate_id", "description": "init mode only"},
            "embedding_column": {"type": "string", "default": "item_tower_emb",
                                 "description": "learnt mode only"},
            "attr_columns": {**_NAMES, "description": "categorical item features (mode over leaves)"},
            "raw_attr_columns": {**_NAMES, "description": "numeric item features (mean over leaves)"},
            "attr_delimiter": {"type": "string", "minLength": 1, "default": ","},
            "id_hash": {"type": "boolean", "default": False,
                        "description": "string item ids (tzrec hash mode): internal ids nonleaf#<code>"},
            "kmeans_iters": {"type": "integer", "minimum": 1, "default": 10, "description": "learnt mode"},
            "seed": {"type": "integer", "minimum": 0, "default": 42, "description": "learnt mode"},
            "memory_budget": budget_schema(
                "learnt mode: memory of the k-means; a tree whose vectors do not fit is built out of core"),
        },
    }

    @classmethod
    def key_facts(cls, params: dict[str, Any]) -> dict[str, Any]:
        from recbuild.retrieval.memory import budget_fact

        return budget_fact(params.get("memory_budget")) if cls.mode_of(params) == "learnt" else {}

    @staticmethod
    def mode_of(params) -> str | None:
        if params.get("mode"):
            return params["mode"]
        if params.get("embeddings") and not params.get("items"):
            return "learnt"
        if params.get("items") and not params.get("embeddings"):
            return "init"
        return None

    def check(self, params):
        mode = self.mode_of(params)
        if mode is None:
            return [("mode", "give `items` (mode: init) or `embeddings` (mode: learnt), or set mode")]
        problems = []
        needed = "items" if mode == "init" else "embeddings"
        other = "embeddings" if mode == "init" else "items"
        if not params.get(needed):
            problems.append((needed, f"mode {mode} needs `{needed}`"))
        if params.get(other):
            problems.append((other, f"is not used by mode {mode}; remove it"))
        if mode == "init" and "embedding_column" in params and params["embedding_column"] != "item_tower_emb":
            problems.append(("embedding_column", "applies to mode learnt only"))
        columns = [*params["attr_columns"], *params["raw_attr_columns"]]
        dup = sorted({c for c in columns if columns.count(c) > 1})
        if dup:
            problems.append(("attr_columns", f"column(s) listed twice: {', '.join(dup)}"))
        return problems

    def build(self, ctx: BuildContext) -> None:
        import numpy as np
        import pyarrow as pa

        from recbuild.retrieval import tdm_tree as tt
        from recbuild.retrieval import tree_io
        from recbuild.retrieval.memory import format_bytes, parse_budget
        from recbuild.retrieval.tdm_tree import out_of_core as ooc
        from recbuild.retrieval.embeddings_io import (EmbeddingTable, iter_batches, parquet_files,
                                                      require_columns, table_info)

        p = ctx.params
        for path, message in self.check(p):
            raise BuildError(f"{path}: {message}")
        mode = self.mode_of(p)
        k = p["n_cluster"]
        id_column = p["item_id_column"]
        attrs = list(p["attr_columns"])
        raws = list(p["raw_attr_columns"])
        hash_ids = p["id_hash"]
        out_of_core = None

        if mode == "init":
            source = ctx.input("items")
            where = f"items {source.name!r}"
            cate_column = p["cate_id_column"]
            info = table_info(parquet_files(source), where)
            columns = list(dict.fromkeys([id_column, cate_column, *attrs, *raws]))
            require_columns(info, columns, where)
            table = pa.Table.from_batches([b for _, b in iter_batches(info, columns)],
                                          schema=_select_schema(info.schema, columns))
            if table.num_rows == 0:
                raise BuildError(f"{where}: the table has no rows")
            ids = tt.validate_item_ids(table.column(id_column), where, hash_ids)
            sort_ids = pa.array(ids, type=pa.string()) if hash_ids else pa.array(ids, type=pa.int64())
            order = tt.init_order(sort_ids, table.column(cate_column))
            depth = tt.tree_depth(table.num_rows, k)
            leaf_codes = tt.init_leaf_codes(table.num_rows, k, depth)  # in sorted order
            leaf_table = table.take(pa.array(order))
            leaf_ids = [ids[i] for i in order] if hash_ids else ids[order]
            leaves = tt.TreeLeaves.from_leaf_codes(leaf_codes, leaf_ids, k, depth, hash_ids)
        else:
            source = ctx.input("embeddings")
            where = f"embeddings {source.name!r}"
            table_reader = EmbeddingTable(source, id_column, p["embedding_column"],
                                          where, extra_columns=[*attrs, *raws])
            n_rows = table_reader.num_rows
            dim = _first_dim(table_reader)
            budget = parse_budget(p["memory_budget"], f"tdm_tree {ctx.name}: memory_budget")
            depth = tt.tree_depth(n_rows, k)
            if ooc.in_memory_bytes(n_rows, dim) <= budget:
                id_array, vectors, extra = table_reader.read_all()
                leaf_ids = tt.validate_item_ids(id_array, where, hash_ids)
                bar = ctx.progress(depth, "levels")
                try:
                    leaf_codes = tt.learnt_leaf_codes(vectors, k, iters=p["kmeans_iters"],
                                                      seed=p["seed"], threads=ctx.threads,
                                                      progress=bar.advance, overwrite=True)
                finally:
                    bar.close()
                del vectors
                leaves = tt.TreeLeaves.from_leaf_codes(leaf_codes, leaf_ids, k, depth, hash_ids)
            else:
                leaf_ids, extra = _ids_and_extras(table_reader, where, hash_ids)
                plan = ooc.plan(n_rows, dim, k, budget)
                ctx.log.info("tdm_tree %s: %d x %d vectors need about %s in memory, over the budget "
                             "of %s: out of core, %d subtrees of <= %d items", ctx.name, n_rows, dim,
                             format_bytes(ooc.in_memory_bytes(n_rows, dim)), format_bytes(budget),
                             plan.n_subtrees, plan.max_subtree)
                if n_rows * ooc.PER_ITEM_STATE >= budget // 2:
                    ctx.warn(f"{n_rows:,} items need about {format_bytes(n_rows * ooc.PER_ITEM_STATE)} of "
                             f"bookkeeping ({ooc.PER_ITEM_STATE} bytes each), half or more of memory_budget "
                             f"{format_bytes(budget)}: the step will use more, and its k-means sample is "
                             f"{plan.sample_size:,} items; raise memory_budget")
                bar = ctx.progress(plan.cut_level + plan.n_subtrees, "steps", "out of core")
                try:
                    codes, rows = ooc.out_of_core_leaves(
                        table_reader, plan, iters=p["kmeans_iters"], seed=p["seed"], threads=ctx.threads,
                        scratch=_scratch_dir(ctx), progress=bar.advance)
                finally:
                    bar.close()
                out_of_core = plan.summary()
                leaf_codes = None
                if attrs or raws:  # the attribute tables pair each table row with its code
                    leaf_codes = np.empty_like(codes)
                    leaf_codes[rows] = codes
                ids_in_code_order = [leaf_ids[i] for i in rows] if hash_ids else leaf_ids[rows]
                del leaf_ids, rows
                leaves = tt.TreeLeaves.checked(k, depth, codes, ids_in_code_order, hash_ids)
            leaf_table = extra

        tree_io.write_tree(leaves, leaf_codes, leaf_table, id_column, attrs, raws, ctx.out, p["attr_delimiter"])
        figures = tt.balance(leaves)
        n_items = figures["items"]
        if out_of_core:  # (only then: metrics of trees built in memory keep their bytes)
            figures["out_of_core"] = out_of_core
        (ctx.out / METRICS_FILE).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n",
                                            encoding="utf-8")
        ctx.meta.update({"mode": mode, "n_cluster": k, "items": n_items, "levels": figures["levels"],
                         "nodes": figures["nodes"]})
        if out_of_core:
            ctx.meta["out_of_core"] = out_of_core
        ctx.log.info("tdm_tree %s: %d items, %d levels, n_cluster %d (%s)", ctx.name, n_items,
                     figures["levels"], k, mode)


def _select_schema(schema, columns):
    import pyarrow as pa

    return pa.schema([schema.field(c) for c in columns])


def _first_dim(table) -> int:
    for part in table.batches(batch_rows=1):
        return part.vectors.shape[1]
    raise BuildError("empty embedding table")


def _ids_and_extras(table, where: str, hash_ids: bool):
    """Item ids (validated) and the attribute columns, without the vectors."""
    import pyarrow as pa

    from recbuild.retrieval import tdm_tree as tt
    from recbuild.retrieval.embeddings_io import check_ids, iter_batches

    ids, extras = [], []
    for offset, batch in iter_batches(table.info, [table.id_column, *table.extra_columns]):
        check_ids(batch.column(0), where, offset)
        ids.append(batch.column(0))
        if table.extra_columns:
            extras.append(batch.select(table.extra_columns))
    leaf_ids = tt.validate_item_ids(pa.chunked_array(ids).combine_chunks(), where, hash_ids)
    return leaf_ids, (pa.Table.from_batches(extras) if extras else None)


def _scratch_dir(ctx: BuildContext):
    """Spill files go beside the artifacts (the work folder's disk), not to a small /tmp."""
    folder = ctx.workdir
    return folder if folder and folder.is_dir() else None
