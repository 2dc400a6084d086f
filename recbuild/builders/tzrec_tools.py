"""The tzrec kinds around a trained model: its tools for embeddings (faiss index, hitrate) and for
TDM trees (init_tree, cluster_tree, beam-search retrieval).

  tzrec_create_faiss_index  python -m tzrec.tools.create_faiss_index -> faiss_index, id_mapping (+ index_meta.json)
  tzrec_hitrate             torchrun -m tzrec.tools.hitrate           -> total/, [details/], metrics.json
  tzrec_init_tree           python -m tzrec.tools.tdm.init_tree       -> TDM tree files
  tzrec_cluster_tree        python -m tzrec.tools.tdm.cluster_tree    -> TDM tree files
  tzrec_retrieval           torchrun -m tzrec.tools.tdm.retrieval     -> part-*.parquet, metrics.json

Inputs are declared and content-hashed as for every tzrec kind (recbuild/builders/tzrec_common.py,
the flow recbuild/builders/tzrec_step.py); the model kinds are recbuild/builders/tzrec_training.py.
"""

from __future__ import annotations

import re
from typing import Any

from recbuild.builders.base import InputArtifact
from recbuild.builders.tzrec_common import (NAME_LIST, NONEMPTY_STRING, TzrecKind, data_suffix, parquet_rows,
                                            tzrec_schema)
from recbuild.errors import InputError

_TREE_PROPS = {
    "item_id_field": {"type": "string", "minLength": 1, "default": "item_id"},
    "attr_fields": {**NAME_LIST, "description": "categorical item columns (mode over leaves)"},
    "raw_attr_fields": {**NAME_LIST, "description": "numeric item columns (mean over leaves)"},
    "attr_delimiter": {"type": "string", "minLength": 1, "default": ","},
    "n_cluster": {"type": "integer", "minimum": 2, "default": 2},
    "id_hash": {"type": "boolean", "default": False,
                "description": "string item ids: runs tzrec with USE_HASH_NODE_ID=1"},
}


def _embedding_type_problem(artifact: InputArtifact, column: str, where: str) -> None:
    """tzrec's create_faiss_index/hitrate read list<...> or comma strings, not fixed_size_list."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recbuild.builders.tzrec_step import data_files

    files = [f for f in data_files(artifact) if f.suffix == ".parquet"]
    if not files:
        raise InputError(f"{where} {artifact.name!r} has no parquet files")
    schema = pq.ParquetFile(files[0]).schema_arrow
    if column not in schema.names:
        raise InputError(f"{where} {artifact.name!r} has no column {column!r}; columns: {', '.join(schema.names)}")
    kind = schema.field(column).type
    if pa.types.is_fixed_size_list(kind):
        raise InputError(f"{where} {artifact.name!r}: column {column} is {kind}, which tzrec's tools cannot "
                         "read (they take list<...> or comma-joined strings); build it with "
                         "`embedding_format: list_double` (recbuild's item/user_embeddings)")


class TzrecCreateFaissIndex(TzrecKind):
    kind = "tzrec_create_faiss_index"
    step = "create_faiss_index"
    description = "TorchEasyRec create_faiss_index over an embedding table (faiss_index, id_mapping)"
    reference_fields = ("embeddings",)
    path_fields = ("embeddings",)
    schema = tzrec_schema({
        "embeddings": {**NONEMPTY_STRING, "description": "item embedding table (tzrec predict output, or recbuild's "
                                              "item_embeddings with embedding_format: list_double)"},
        "id_field": {**NONEMPTY_STRING, "default": "item_id"},
        "embedding_field": {**NONEMPTY_STRING, "default": "item_tower_emb"},
        "index_type": {"enum": ["IVFFlatIP", "HNSWFlatIP", "IVFFlatL2", "HNSWFlatL2"], "default": "IVFFlatIP"},
        "ivf_nlist": {"type": "integer", "minimum": 1, "default": 1000},
        "hnsw_M": {"type": "integer", "minimum": 2, "default": 32},
        "hnsw_efConstruction": {"type": "integer", "minimum": 1, "default": 200},
        "batch_size": {"type": "integer", "minimum": 1, "default": 1024},
    }, ["embeddings"])

    def precheck(self, ctx, p):
        table = ctx.input("embeddings")
        _embedding_type_problem(table, p["embedding_field"], "embeddings")
        rows = parquet_rows(table)
        if p["index_type"].startswith("IVF") and rows is not None \
                and p["ivf_nlist"] > rows:
            raise InputError(f"ivf_nlist={p['ivf_nlist']} is larger than the {rows} embeddings in "
                             f"{table.name!r}; faiss needs at least one vector per list (about sqrt(rows) "
                             "is usual)")

    def run_step(self, ctx, run, p):
        from recbuild.tzrec import outputs

        table = ctx.input("embeddings")
        index_type = p["index_type"]
        args = ["--embedding_input_path", run.table(table), "--index_output_dir", run.out(),
                "--id_field", p["id_field"], "--embedding_field",
                p["embedding_field"], "--index_type", index_type,
                "--ivf_nlist", p["ivf_nlist"], "--hnsw_M", p["hnsw_M"],
                "--hnsw_efConstruction", p["hnsw_efConstruction"],
                "--batch_size", p["batch_size"]]
        run.run("tzrec.tools.create_faiss_index", args, distributed=False)
        meta = outputs.faiss_index(ctx.out)
        run.finish()
        ctx.meta.update({k: meta[k] for k in ("type", "metric", "dim", "count")})


class TzrecHitrate(TzrecKind):
    kind = "tzrec_hitrate"
    step = "hitrate"
    headline = ("hitrate@k",)
    metric_docs = {"hitrate@k": "tzrec.tools.hitrate: ground-truth items found in the top k of the index "
                                "search over all ground-truth items"}
    description = "TorchEasyRec hitrate of user vectors against an IVF index of item vectors (metrics.json)"
    reference_fields = ("user_embeddings", "item_embeddings")
    path_fields = ("user_embeddings", "item_embeddings")
    schema = tzrec_schema({
        "user_embeddings": {**NONEMPTY_STRING,
                            "description": "table with request id, ground truth items and user vectors"},
        "item_embeddings": {**NONEMPTY_STRING, "description": "table with item ids and item vectors"},
        "request_id_field": {**NONEMPTY_STRING, "default": "request_id"},
        "gt_items_field": {**NONEMPTY_STRING, "default": "gt_items",
                           "description": "ground truth: a list, or ids joined by commas (an id column works)"},
        "user_embedding_field": {**NONEMPTY_STRING, "default": "user_tower_emb"},
        "item_id_field": {**NONEMPTY_STRING, "default": "item_id"},
        "item_embedding_field": {**NONEMPTY_STRING, "default": "item_tower_emb"},
        "index_type": {"enum": ["IVFFlatIP", "IVFFlatL2"], "default": "IVFFlatIP"},
        "ivf_nlist": {"type": "integer", "minimum": 1, "default": 1000},
        "ivf_nprobe": {"type": "integer", "minimum": 1, "default": 800},
        "top_k": {"type": "integer", "minimum": 1, "default": 200},
        "num_interests": {"type": "integer", "minimum": 1, "default": 1},
        "batch_size": {"type": "integer", "minimum": 1, "default": 1024},
        "details": {"type": "boolean", "default": False,
                    "description": "also write details/ (per request: top-k ids, distances, hits)"},
    }, ["user_embeddings", "item_embeddings"])

    def precheck(self, ctx, p):
        users, items = ctx.input("user_embeddings"), ctx.input("item_embeddings")
        _embedding_type_problem(users, p["user_embedding_field"], "user_embeddings")
        _embedding_type_problem(items, p["item_embedding_field"], "item_embeddings")
        rows = parquet_rows(items)
        if rows is not None and p["ivf_nlist"] > rows:
            raise InputError(f"ivf_nlist={p['ivf_nlist']} is larger than the {rows} items in "
                             f"{items.name!r}; lower it (about sqrt(rows) is usual)")

    def run_step(self, ctx, run, p):
        from recbuild.tzrec import outputs
        from recbuild.builders.tzrec_step import write_metrics

        users, items = ctx.input("user_embeddings"), ctx.input("item_embeddings")
        args = ["--user_gt_input", run.table(users), "--item_embedding_input", run.table(items),
                "--total_hitrate_output", run.out("total"),
                "--request_id_field", p["request_id_field"],
                "--gt_items_field", p["gt_items_field"],
                "--user_embedding_field", p["user_embedding_field"],
                "--item_id_field", p["item_id_field"],
                "--item_embedding_field", p["item_embedding_field"],
                "--index_type", p["index_type"], "--ivf_nlist", p["ivf_nlist"],
                "--ivf_nprobe", p["ivf_nprobe"], "--top_k", p["top_k"],
                "--num_interests", p["num_interests"], "--batch_size", p["batch_size"]]
        if p.get("details"):
            args += ["--hitrate_details_output", run.out("details")]
        run.run("tzrec.tools.hitrate", args, distributed=True)
        value = outputs.hitrate(ctx.out / "total")
        write_metrics(ctx.out, {f"hitrate@{p['top_k']}": value})
        run.finish()
        ctx.meta[f"hitrate@{p['top_k']}"] = value


class _TreeTool(TzrecKind):
    """What init_tree and cluster_tree share: the tree arguments and the check of the tree files."""

    def tree_args(self, run, p) -> list[Any]:
        args = ["--item_id_field", p["item_id_field"], "--node_edge_output_file", run.out(),
                "--tree_output_dir", run.out(), "--n_cluster", p["n_cluster"],
                "--attr_delimiter", p["attr_delimiter"]]
        if p.get("attr_fields"):
            args += ["--attr_fields", ",".join(p["attr_fields"])]
        if p.get("raw_attr_fields"):
            args += ["--raw_attr_fields", ",".join(p["raw_attr_fields"])]
        if p.get("id_hash"):
            run.tz.env["USE_HASH_NODE_ID"] = "1"
        return args

    def finish_tree(self, ctx, run):
        from recbuild.tzrec import outputs

        info = outputs.tree(ctx.out)
        run.finish()
        ctx.meta.update(info)


class TzrecInitTree(_TreeTool):
    kind = "tzrec_init_tree"
    step = "init_tree"
    description = "TorchEasyRec's TDM init_tree: items by (category, id) (serving_tree, node/edge tables)"
    reference_fields = ("items",)
    path_fields = ("items",)
    schema = tzrec_schema({
        "items": {**NONEMPTY_STRING, "description": "item table: a source, artifact or path"},
        "cate_id_field": {**NONEMPTY_STRING, "default": "cate_id"},
        **_TREE_PROPS,
    }, ["items"])

    def run_step(self, ctx, run, p):
        args = ["--item_input_path", run.table(ctx.input("items")),
                "--cate_id_field", p["cate_id_field"], *self.tree_args(run, p)]
        run.run("tzrec.tools.tdm.init_tree", args, distributed=False)
        self.finish_tree(ctx, run)


class TzrecClusterTree(_TreeTool):
    kind = "tzrec_cluster_tree"
    step = "cluster_tree"
    description = "TorchEasyRec's TDM cluster_tree: recursive k-means over item embeddings"
    reference_fields = ("embeddings",)
    path_fields = ("embeddings",)
    schema = tzrec_schema({
        "embeddings": {**NONEMPTY_STRING, "description": "item embeddings (tzrec predict of export/embedding, or any "
                                              "table with ids and vectors)"},
        "embedding_field": {**NONEMPTY_STRING, "default": "item_emb"},
        "parallel": {"type": "integer", "minimum": 1, "default": 1,
                     "description": "k-means processes; tzrec's own default 16 can hang on small inputs"},
        **_TREE_PROPS,
    }, ["embeddings"])

    def run_step(self, ctx, run, p):
        args = ["--item_input_path", run.table(ctx.input("embeddings")),
                "--embedding_field", p["embedding_field"],
                "--parallel", p["parallel"], *self.tree_args(run, p)]
        run.run("tzrec.tools.tdm.cluster_tree", args, distributed=False)
        self.finish_tree(ctx, run)


class TzrecRetrieval(TzrecKind):
    kind = "tzrec_retrieval"
    step = "retrieval"
    headline = ("recall",)
    metric_docs = {"recall": "recall of tzrec's TDM beam search, as tzrec.tools.tdm.retrieval logs it"}
    description = "TorchEasyRec's TDM retrieval (beam search) with an exported TDM model over a tree"
    reference_fields = ("model", "tree", "data")
    path_fields = ("data",)
    schema = tzrec_schema({
        "model": {**NONEMPTY_STRING, "description": "a tzrec_export artifact of a TDM model (its model/ folder)"},
        "tower": {**NONEMPTY_STRING, "default": "model", "description": "the exported folder to run"},
        "tree": {**NONEMPTY_STRING,
                 "description": "the tree: tzrec_init_tree, tzrec_cluster_tree or recbuild's tdm_tree"},
        "data": {**NONEMPTY_STRING,
                 "description": "queries (user features + the gt item): a source, artifact or path"},
        "recall_num": {"type": "integer", "minimum": 1, "default": 200},
        "n_cluster": {"type": "integer", "minimum": 2, "default": 2},
        "reserved_columns": NAME_LIST,
        "batch_size": {"type": ["integer", "null"], "minimum": 1, "default": None},
        "num_worker_per_level": {"type": "integer", "minimum": 1, "default": 1},
        "id_hash": {"type": "boolean", "default": False},
    }, ["model", "tree", "data"])

    def run_step(self, ctx, run, p):
        from recbuild.retrieval import tree_io
        from recbuild.tzrec import outputs
        from recbuild.builders.tzrec_step import write_metrics

        model, tree = ctx.input("model"), ctx.input("tree")
        folder = model.path / p["tower"]
        if not (folder / "scripted_model.pt").is_file():
            raise InputError(f"model {model.name!r} has no {p['tower']}/scripted_model.pt; "
                             "give a tzrec_export artifact of a TDM model")
        for name in (tree_io.NODE_TABLE, tree_io.EDGE_TABLE, tree_io.PREDICT_EDGE_TABLE):
            if not (tree.path / name).is_file():
                raise InputError(f"tree {tree.name!r} has no {name}")
        # retrieval reads the tree tables named in the exported pipeline.config: a copy of the model
        # folder with the config pointing at this recipe's tree
        import shutil

        local = run.scratch / "model"
        shutil.copytree(folder, local)
        edits = {"train_input_path": "", "eval_input_path": "", "model_dir": "",
                 "data_config.tdm_sampler.item_input_path": run.declare(run.rel(tree.path / tree_io.NODE_TABLE)),
                 "data_config.tdm_sampler.edge_input_path": run.declare(run.rel(tree.path / tree_io.EDGE_TABLE)),
                 "data_config.tdm_sampler.predict_edge_input_path":
                     run.declare(run.rel(tree.path / tree_io.PREDICT_EDGE_TABLE))}
        for value in self._asset_dirs(local):
            run.declare(value)
        run.prepare_config(local / "pipeline.config", {}, edits, f"{model.name}/pipeline.config",
                           name="model/pipeline.config")
        if p.get("id_hash"):
            run.tz.env["USE_HASH_NODE_ID"] = "1"
        data = ctx.input("data")
        args = ["--scripted_model_path", run.rel(local), "--predict_input_path", run.table(data, data_suffix(data)),
                "--predict_output_path", run.out(), "--recall_num", p["recall_num"],
                "--n_cluster", p["n_cluster"], "--num_worker_per_level", p["num_worker_per_level"]]
        if p.get("reserved_columns"):
            args += ["--reserved_columns", ",".join(p["reserved_columns"])]
        if p.get("batch_size"):
            args += ["--batch_size", p["batch_size"]]
        run.run("tzrec.tools.tdm.retrieval", args, distributed=True)
        info = outputs.parquet_table(ctx.out, ["recall_ids"], None, "retrieval")
        recall = _logged_recall(run.log_path)
        if recall is not None:
            write_metrics(ctx.out, {"recall": recall})
        run.finish()
        ctx.meta.update(info)

    @staticmethod
    def _asset_dirs(folder) -> list[str]:
        text = (folder / "pipeline.config").read_text(encoding="utf-8")
        return re.findall(r'asset_dir:\s*"([^"]*)"', text)


def _logged_recall(log_path) -> float | None:
    """The last recall tzrec.tools.tdm.retrieval logged (it writes no metrics file), None if none."""
    found = None
    try:
        for line in open(log_path, encoding="utf-8", errors="replace"):
            match = re.search(r"Retrieval Finished\. Recall:\s*([0-9.eE+-]+)", line)
            if match:
                found = float(match.group(1))
    except OSError:
        return None
    return found
