"""recbuild's exported modules in TorchEasyRec's predict contract (``tzrec.predict``, FG_NONE, parquet).

``export`` and ``towers`` write, in every exported folder whose features FG_NONE can express (param
``tzrec_files``), next to recbuild's own files:

  scripted_model.pt  ONE TorchScript module taking both call styles (the same bytes serve both):
                       recbuild:  ``module(inputs)``           inputs keyed by feature name
                                  (id ``int64 [B]``, numeric ``float32 [B]``; docs/internals.md)
                       tzrec:     ``module(data, device)``     ``<f>.values`` / ``<f>.lengths``
                                  (id: raw int64 values + lengths, all 1; raw: ``float32 [B, 1]``)
                     Which style arrived is read off the keys (feature names cannot hold a dot).
  pipeline.config    text proto: ``data_config`` (ParquetDataset, FG_NONE, one worker) and one
                     ``feature_configs`` per input, named like its parquet column
  model_acc.json     ``{"SPARSE_INT64": "1"}``, as ``tzrec.export`` writes it
  fg.json            (always written, by feature_io) in TorchEasyRec's shape, no bucketizer

so ``tzrec.predict --scripted_model_path FOLDER`` runs the folder as it is.

Ids are hashed in one place only: in the graph (``mix64(id) % buckets``). FG_NONE hands the model the
column's raw values, and the generated fg.json and pipeline.config declare no ``hash_bucket_size``:
a feature generator run from them (TorchEasyRec's Processor, FG_DAG) passes raw ids through too.
That last part is not verified here (no pyfg); docs/tzrec.md says what is.

What FG_NONE cannot express is refused with the feature and the fix (``unsupported``): string ids
(recbuild hashes them while reading; tzrec parses the column as integers), a feature whose column
has another name (FG_NONE reads the column named like the feature; two features on one column is
the same problem), and sequences. With ``tzrec_files: auto`` (default) such an export is written
without TorchEasyRec's files and says why (build log, manifest ``meta.tzrec``); ``required`` fails.

At export time the written scripted_model.pt (in the temporary folder, never from outside) is called
both ways on the same rows and compared with the eager module and with each other.
"""

# No `from __future__ import annotations`: TorchScript reads TzrecCallable's class annotations.
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from recbuild.errors import BuildError

MODES = ("auto", "required", "off")
PIPELINE_CONFIG = "pipeline.config"
MODEL_ACC = "model_acc.json"
SCRIPTED = "scripted_model.pt"
FILES = (SCRIPTED, PIPELINE_CONFIG, MODEL_ACC, "fg.json")
PREDICT_BATCH_SIZE = 1024  # tzrec's default; tzrec_predict's batch_size (--batch_size) overrides it
# tzrec.export writes acc_utils.export_acc_config() with json.dump(indent=4); SPARSE_INT64 is the
# one key set without acceleration env vars (tzrec.predict reads INPUT_TILE/ENABLE_AOT/ENABLE_TRT).
MODEL_ACC_TEXT = json.dumps({"SPARSE_INT64": "1"}, indent=4)
_OFF_HINT = "or set tzrec_files: off to export without TorchEasyRec's files"


# ---------------------------------------------------------------------------------------------
# What FG_NONE can express


def unsupported(specs: Sequence[Any]) -> list[str]:
    """One message per feature (model FeatureSpecs) tzrec's FG_NONE input cannot feed, with the fix."""
    problems = []
    by_column: dict[str, list[str]] = {}
    for spec in specs:
        by_column.setdefault(spec.column, []).append(spec.name)
    shared = {column: names for column, names in by_column.items() if len(names) > 1}
    for column, names in shared.items():
        listed = ", ".join(repr(n) for n in names)
        problems.append(f"features {listed} all read column {column!r}: tzrec's FG_NONE reader feeds "
                        "each feature from the parquet column named like it; give each feature a "
                        "column of its own (copy the column in the data, name the feature after it) "
                        f"or drop all but one, {_OFF_HINT}")
    for spec in specs:
        if spec.column in shared:
            continue
        if spec.type == "sequence":
            problems.append(f"feature {spec.name!r} is a sequence: its TorchEasyRec input (jagged "
                            "ids of a sequence feature) is not mapped to recbuild's padded "
                            f"[B, max_len] ids; drop it from model.features, {_OFF_HINT}")
        elif spec.value_type == "string":
            problems.append(f"feature {spec.name!r} has value_type: string: recbuild hashes those "
                            "strings while reading (xxh3), but tzrec's FG_NONE reader parses the "
                            "column as integers; store the ids as int64 in the data (e.g. "
                            "recbuild.ml.feature_io.hash_string_ids) and train with value_type: int64, "
                            f"{_OFF_HINT}")
        elif spec.column != spec.name:
            problems.append(f"feature {spec.name!r} reads column {spec.column!r}: tzrec's FG_NONE "
                            "reader reads the parquet column named like the feature; name the "
                            f"feature {spec.column!r} (and drop column:), {_OFF_HINT}")
    return problems


def plan(mode: str, specs: Sequence[Any], formats: Sequence[str], where: str) -> str | None:
    """None when TorchEasyRec's files are to be written, else why not (``auto``/``off``).

    ``required`` raises BuildError with every reason instead. ``where`` names the module
    (e.g. "the user tower") in the message.
    """
    if mode == "off":
        return "tzrec_files: off"
    reasons = []
    if "torchscript" not in formats:
        reasons.append("TorchEasyRec's predict loads scripted_model.pt: add torchscript to formats, "
                       + _OFF_HINT)
    reasons += unsupported(specs)
    if not reasons:
        return None
    if mode == "required":
        raise BuildError(f"tzrec_files: required, but TorchEasyRec's FG_NONE predict cannot feed {where}: "
                         + "; ".join(reasons))
    return "; ".join(reasons)


# ---------------------------------------------------------------------------------------------
# The module taking both call styles


class TzrecCallable(nn.Module):
    """``forward(inputs)`` as recbuild calls it, or ``forward(data, device)`` as tzrec.predict does.

    tzrec's dict (FG_NONE): id feature ``f`` -> ``f.values`` int64 ``[N]`` (the column's raw values)
    and ``f.lengths`` int64 ``[B]``; raw feature ``f`` -> ``f.values`` float32 ``[B, 1]``. It is
    turned into recbuild's dict (``f`` -> int64 ``[B]`` / float32 ``[B]``) and the same module runs.
    A row without exactly one id (null, multi-valued) is an error: recbuild's reader refuses such
    rows too, and skipping them would shift every later row.
    """

    id_names: List[str]
    raw_names: List[str]
    style_key: str

    def __init__(self, module: nn.Module, id_names: List[str], raw_names: List[str]):
        super().__init__()
        self.module = module
        self.id_names = list(id_names)
        self.raw_names = list(raw_names)
        self.style_key = (self.id_names + self.raw_names)[0] + ".values"

    def forward(self, inputs: Dict[str, Tensor], device: Optional[torch.device] = None) -> Dict[str, Tensor]:
        if self.style_key in inputs:
            inputs = self.from_tzrec(inputs, device)
        return self.module(inputs)

    def from_tzrec(self, data: Dict[str, Tensor], device: Optional[torch.device]) -> Dict[str, Tensor]:
        out: Dict[str, Tensor] = {}
        for name in self.id_names:
            values = data[name + ".values"]
            lengths = data[name + ".lengths"]
            if values.numel() != lengths.numel() or not bool(torch.all(lengths == 1)):
                raise RuntimeError("recbuild model: id feature '" + name + "' needs exactly one id per "
                                   "row, but a row has none (null) or several; fill or drop such rows")
            out[name] = values.to(torch.int64)
        for name in self.raw_names:
            values = data[name + ".values"]
            if values.dim() != 2 or values.size(1) != 1:
                raise RuntimeError("recbuild model: raw feature '" + name + "' must arrive as "
                                   "float32 [B, 1] (one value per row)")
            out[name] = values.reshape(-1).to(torch.float32)
        if device is not None:
            for name in self.id_names + self.raw_names:
                out[name] = out[name].to(device)
        return out


def callable_for(module: nn.Module, specs: Sequence[Any]) -> TzrecCallable:
    return TzrecCallable(module, [s.name for s in specs if s.type == "id"],
                         [s.name for s in specs if s.type == "numeric"])


def tzrec_inputs(inputs: Dict[str, Tensor], specs: Sequence[Any]) -> Dict[str, Tensor]:
    """recbuild's input dict as tzrec's FG_NONE parquet reader gives the same rows (no nulls)."""
    data: Dict[str, Tensor] = {}
    for spec in specs:
        value = inputs[spec.name]
        if spec.type == "id":
            data[f"{spec.name}.values"] = value.to(torch.int64)
            data[f"{spec.name}.lengths"] = torch.ones(value.shape[0], dtype=torch.int64)
        elif spec.type == "numeric":
            data[f"{spec.name}.values"] = value.to(torch.float32).reshape(-1, 1)
        else:
            raise ValueError(f"feature {spec.name!r}: {spec.type} features have no tzrec input here")
    return data


# ---------------------------------------------------------------------------------------------
# pipeline.config and model_acc.json


def _quote(text: str) -> str:
    """A text-proto string literal (C escapes)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def pipeline_config_text(specs: Sequence[Any], batch_size: int = PREDICT_BATCH_SIZE) -> str:
    """tzrec's pipeline.config (text proto) for predict: data_config + one feature_configs per input.

    No model_config (predict does not build the model). Id features carry no hash_bucket_size /
    num_buckets: the ids stay raw and the exported graph hashes them; ``fg_value_type: "int64"``
    makes tzrec's own fg.json of this config (``create_fg_json``) equal recbuild's fg.json.
    """
    lines = [
        "# Written by recbuild: how TorchEasyRec's predict feeds scripted_model.pt in this folder.",
        "# FG_NONE: each feature reads the parquet column named like it. Ids stay raw: the model",
        "# hashes them itself (mix64(id) % buckets), so no feature declares hash_bucket_size.",
        "# The model's own config (buckets, dims, layers) is pipeline.yaml.",
        "data_config {",
        f"  batch_size: {int(batch_size)}",
        "  dataset_type: ParquetDataset",
        "  fg_mode: FG_NONE",
        "  num_workers: 1",
        "}",
    ]
    for spec in specs:
        if spec.type == "id":
            body = [f"feature_name: {_quote(spec.name)}", f"expression: {_quote(f'{spec.group}:{spec.column}')}",
                    f"embedding_dim: {int(spec.dim)}", "value_dim: 1", 'fg_value_type: "int64"']
            kind = "id_feature"
        elif spec.type == "numeric":
            body = [f"feature_name: {_quote(spec.name)}", f"expression: {_quote(f'{spec.group}:{spec.column}')}"]
            kind = "raw_feature"
        else:
            raise ValueError(f"feature {spec.name!r}: {spec.type} features have no tzrec feature config here")
        lines += ["feature_configs {", f"  {kind} {{", *(f"    {line}" for line in body), "  }", "}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Writing and verifying one folder


def write_files(module: nn.Module, specs: Sequence[Any], folder: Path) -> None:
    """scripted_model.pt (the module taking both call styles), pipeline.config, model_acc.json."""
    from recbuild.ml.exporter.formats import save_torchscript

    folder = Path(folder)
    wrapper = callable_for(module, specs).eval()
    save_torchscript(wrapper, folder / SCRIPTED)
    (folder / PIPELINE_CONFIG).write_text(pipeline_config_text(specs), encoding="utf-8")
    (folder / MODEL_ACC).write_text(MODEL_ACC_TEXT, encoding="utf-8")


def verify(module: nn.Module, specs: Sequence[Any], folder: Path, inputs: Dict[str, Tensor],
           tolerance: float) -> dict[str, float]:
    """Call the written scripted_model.pt both ways on the same rows; max |diff| of each against the
    eager module and of the two calls against each other. Loads only the file just written into the
    temporary build folder."""
    path = Path(folder) / SCRIPTED
    with torch.no_grad():
        expected = module(dict(inputs))
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
            ours = scripted(dict(inputs))
            theirs = scripted(tzrec_inputs(inputs, specs), torch.device("cpu"))
        except Exception as exc:
            raise BuildError(f"{SCRIPTED} (TorchEasyRec's call style) was written but does not run: "
                             f"{type(exc).__name__}: {str(exc).strip()[:600]}") from None
    from recbuild.ml.exporter.formats import max_output_diff

    diffs = {"recbuild_call": max_output_diff(ours, expected, f"{SCRIPTED} called as recbuild does"),
             "tzrec_call": max_output_diff(theirs, expected, f"{SCRIPTED} called as tzrec.predict does"),
             "between_calls": max_output_diff(theirs, ours, f"{SCRIPTED}: the two call styles")}
    labels = {"recbuild_call": "called as recbuild does, differs from the eager model",
              "tzrec_call": "called as tzrec.predict does, differs from the eager model",
              "between_calls": "gives different outputs for the two call styles on the same rows,"}
    for name, diff in diffs.items():
        if not diff <= tolerance:
            raise BuildError(f"{SCRIPTED} {labels[name]} by {diff:.3g} (tolerance {tolerance:g})")
    return diffs

