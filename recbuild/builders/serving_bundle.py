"""`kind: serving_bundle` — one folder a serving process loads as is (layout: recbuild/ml/serving_bundle.py).

Accepts recbuild's artifacts and TorchEasyRec's: `model` may be a tzrec export (`user/` + `item/` of
a match model become the bundle's towers; `model/` + `embedding/` of a TDM model are kept as such),
and `index` may hold only `faiss_index` + `id_mapping` (tzrec's create_faiss_index): the bundle's
`user/index_meta.json` is then read off the index.

Check a built bundle end to end with ``recbuild.ml.serving_bundle.serve_check(bundle_dir, query_row)``.
"""

from __future__ import annotations

from recbuild.builders.base import BuildContext, Builder
from recbuild.errors import BuildError, InputError

_PARTS = ("model", "towers", "index", "tree")


class ServingBundleBuilder(Builder):
    kind = "serving_bundle"
    uses_torch = True
    version = "1"
    toolchain = ("faiss", "numpy")
    description = "deployable folder: model/, user/ (tower + faiss_index), item/, tree/, serving_config.json"
    reference_fields = _PARTS
    schema = {
        "type": "object",
        "properties": {
            "model": {"type": "string", "description": "export artifact -> model/"},
            "towers": {"type": "string", "description": "towers artifact -> user/ and item/"},
            "index": {"type": "string",
                      "description": "faiss_index artifact -> user/faiss_index + id_mapping"},
            "tree": {"type": "string", "description": "tdm_tree artifact -> tree/ (and model/serving_tree)"},
            "nprobe": {"type": ["integer", "null"], "minimum": 1, "default": None,
                       "description": "faiss_nprobe (default: the index's own nprobe)"},
            "ef_search": {"type": ["integer", "null"], "minimum": 1, "default": None,
                          "description": "faiss_ef_search for HNSW (default: the index's own)"},
            "neigh_num": {"type": "integer", "minimum": 1, "default": 200, "description": "faiss_neigh_num"},
            "tdm_retrieval_num": {"type": "integer", "minimum": 1, "default": 200},
            "outputs": {"type": ["array", "null"], "items": {"type": "string"}, "default": None,
                        "description": "model outputs to serve (default: user_tower_emb with towers, "
                                       "probs with a model)"},
        },
    }

    def check(self, params):
        if not any(params.get(part) for part in _PARTS):
            return [("model", "a serving_bundle needs at least one of model, towers, index, tree")]
        return []

    def build(self, ctx: BuildContext) -> None:
        from recbuild.ml import serving_bundle as bundle
        from recbuild.retrieval import faiss_index as fi

        p = ctx.params
        for path, message in self.check(p):
            raise BuildError(f"{path}: {message}")
        out = ctx.out
        parts = []
        model_is_towers = False
        if p.get("model"):
            model = ctx.input("model")
            layout = bundle.export_layout(model.path)
            if layout == "towers" and not p.get("towers"):
                # a TorchEasyRec export of a match model: export/user + export/item are the towers
                model_is_towers = True
                for side in ("user", "item"):
                    bundle.copy_tree(model.path / side, out / side)
                parts.append("towers")
            elif layout == "tdm":  # TorchEasyRec's TDM export: export/model + export/embedding
                bundle.copy_tree(model.path / "model", out / "model")
                bundle.copy_tree(model.path / "embedding", out / "embedding")
                parts.append("model")
            else:
                if not bundle.copy_tree(model.path, out / "model"):
                    raise InputError(f"model {model.name!r} is an empty folder")
                parts.append("model")
        if p.get("towers"):
            towers = ctx.input("towers")
            for side in ("user", "item"):
                if not (towers.path / side).is_dir():
                    raise InputError(f"towers {towers.name!r} has no {side}/ folder; rebuild it")
                bundle.copy_tree(towers.path / side, out / side)
            parts.append("towers")
        nprobe = ef_search = None
        if p.get("index"):
            index = ctx.input("index")
            bundle.copy_files(index.path, bundle.INDEX_FILES[:2], out / "user", f"index {index.name!r}")
            meta = fi.read_meta(index.path)  # (derived from the index when it has no index_meta.json)
            fi.write_json(out / "user" / fi.META_FILE, meta)
            params = meta.get("params", {})
            if meta["type"] in ("IVFFlat", "IVFPQ"):
                nprobe = p.get("nprobe") or params.get("nprobe")
            if meta["type"] == "HNSWFlat":
                ef_search = p.get("ef_search") or params.get("ef_search")
            parts.append("index")
        if p.get("tree"):
            tree = ctx.input("tree")
            bundle.copy_files(tree.path, bundle.TREE_FILES, out / "tree", f"tree {tree.name!r}")
            if (out / "model").is_dir():  # tzrec's processor reads serving_tree from the model folder
                bundle.copy_files(tree.path, ["serving_tree"], out / "model", f"tree {tree.name!r}")
            parts.append("tree")
        outputs = p.get("outputs")
        if outputs is None:
            outputs = (["probs"] if p.get("model") and not model_is_towers else []) + \
                (["user_tower_emb"] if p.get("towers") or model_is_towers else [])
        config = {
            "faiss_nprobe": nprobe,
            "faiss_neigh_num": p["neigh_num"] if p.get("index") else None,
            "tdm_retrieval_num": p["tdm_retrieval_num"] if p.get("tree") else None,
            "outputs": list(outputs),
        }
        if ef_search is not None:
            config["faiss_ef_search"] = ef_search
        bundle.write_config(out, config)
        ctx.meta.update({"parts": parts, "serving_config": config})
        ctx.log.info("serving_bundle %s: %s", ctx.name, ", ".join(parts))
