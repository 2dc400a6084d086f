"""`kind: sample_data` — a source kind: synthetic Taobao-shaped parquet tables for demos and tests."""

from __future__ import annotations

from recbuild.builders.base import BuildContext, Builder
from recbuild.errors import BuildError


class SampleDataBuilder(Builder):
    kind = "sample_data"
    version = "1"
    toolchain = ("numpy", "pyarrow")
    description = "deterministic synthetic Taobao-shaped table (items, users or interactions)"
    schema = {
        "type": "object",
        "properties": {
            "table": {"enum": ["items", "users", "interactions"],
                      "description": "which table of the synthetic world to write"},
            "split": {"enum": ["train", "eval"], "default": "train",
                      "description": "interactions only: train and eval are different draws"},
            "rows": {"type": "integer", "minimum": 1,
                     "description": "row count; items/users default to the whole universe, "
                                    "interactions to 10000"},
            "seed": {"type": "integer", "minimum": 0, "default": 42},
            "n_items": {"type": "integer", "minimum": 1, "default": 10000},
            "n_users": {"type": "integer", "minimum": 1, "default": 5000},
            "n_categories": {"type": "integer", "minimum": 1, "default": 50},
            "positive_rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.5,
                              "description": "interactions only: share of label-1 (click) rows"},
        },
        "required": ["table"],
    }

    def check(self, params):
        problems = []
        if params["n_categories"] > params["n_items"]:
            problems.append(("n_categories", "must not exceed n_items"))
        if params.get("table") != "interactions" and params["split"] != "train":
            problems.append(("split", "applies to table: interactions only"))
        universe = {"items": "n_items", "users": "n_users"}.get(params.get("table"))
        if universe and params.get("rows") is not None:
            size = params[universe]
            if params["rows"] > size:
                problems.append(("rows", f"must not exceed {universe} ({size})"))
        return problems

    def build(self, ctx: BuildContext) -> None:
        from recbuild.ml import sampledata

        p = ctx.params
        for path, message in self.check(p):
            raise BuildError(f"{path}: {message}")
        try:
            columns = sampledata.generate(
                p["table"], seed=p["seed"], rows=p.get("rows"), split=p["split"],
                n_items=p["n_items"], n_users=p["n_users"],
                n_categories=p["n_categories"], positive_rate=p["positive_rate"])
        except ValueError as exc:
            raise BuildError(str(exc)) from None
        sampledata.write_parquet(columns, ctx.out / "part-0.parquet")
        ctx.meta["rows"] = int(len(next(iter(columns.values()))))
        ctx.meta["columns"] = list(columns)
