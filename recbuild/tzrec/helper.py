"""Runs in the *tzrec* interpreter (not recbuild's): a small, fast bridge to TorchEasyRec's own code.

recbuild never imports tzrec. It runs this file with the interpreter the recipe names:

    <tzrec python> helper.py COMMAND   (a JSON request on stdin, a JSON answer on stdout)

Commands:
  probe      the tzrec version and distribution (no tzrec import: reads tzrec/version.py)
  config     load a pipeline.config with tzrec's own parser, apply edits with tzrec's own
             ``edit_config`` (the --edit_config_json semantics), write the result, and report every
             path-valued field that is set and the facts recbuild needs (model type, export_config)
  canonical  the sha256 of a pipeline.config as tzrec reads it (tzrec's own loader), serialised
             deterministically: comments, whitespace and the order of fields do not change it
  scrub_dcp  rewrite the ``storage_meta.checkpoint_id`` that torch's distributed checkpoint writes
             into each ``.metadata`` (an absolute path of the temporary build folder) to a path
             relative to the artifact, and clear its random ``save_id``; tzrec's own output,
             unpickled in tzrec's own environment

Only the standard library at module level; tzrec's protobuf modules are loaded *without* running
``tzrec/__init__.py`` (which imports torch, torchrec and every model: 5-8 s), so a request costs
a fraction of a second. This file must not import recbuild (it is not installed there).
"""

import json
import os
import re
import sys
import traceback

PATH_FIELD_SUFFIXES = ("_path", "_file", "_dir")
PATH_FIELD_NAMES = ("fine_tune_checkpoint", "fine_tune_ckpt_param_map", "init_table")


def _bare_tzrec_package():
    """Make ``import tzrec.x`` work without executing tzrec/__init__.py."""
    import importlib.util
    import types

    if "tzrec" in sys.modules:
        return
    spec = importlib.util.find_spec("tzrec")
    if spec is None or not spec.submodule_search_locations:
        raise LookupError("no module named tzrec")
    package = types.ModuleType("tzrec")
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    sys.modules["tzrec"] = package


def probe(_request):
    import importlib.metadata as md
    import importlib.util

    spec = importlib.util.find_spec("tzrec")
    if spec is None or not spec.submodule_search_locations:
        return {"error": "no module named tzrec"}
    folder = list(spec.submodule_search_locations)[0]
    version = None
    try:
        with open(os.path.join(folder, "version.py"), encoding="utf-8") as fh:
            match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", fh.read())
            version = match.group(1) if match else None
    except OSError:
        pass
    dist = None
    for name in ("tzrec", "tzrec-sekai", "tzrec-cpu", "tzrec-gpu"):
        try:
            found = md.version(name)
        except md.PackageNotFoundError:
            continue
        if version is None or found == version:
            dist, version = name, found
            break
    toolchain = {}
    for names in (("torch",), ("torchrec",), ("fbgemm-gpu", "fbgemm-gpu-cpu", "fbgemm_gpu_cpu")):
        for name in names:
            try:
                toolchain[names[0]] = "%s %s" % (name, md.version(name)) if name != names[0] else md.version(name)
                break
            except md.PackageNotFoundError:
                continue
        else:
            toolchain[names[0]] = "not installed"
    return {"version": version, "dist": dist, "path": folder, "python": sys.executable,
            "python_version": "%d.%d.%d" % sys.version_info[:3], "toolchain": toolchain,
            "machine": os.uname().machine}


def _is_path_field(name):
    return name.endswith(PATH_FIELD_SUFFIXES) or name in PATH_FIELD_NAMES


def _path_fields(message, prefix=""):
    """(dotted path in edit_config syntax, value) of every set, non-empty path-valued string field."""
    from google.protobuf.descriptor import FieldDescriptor

    found = []
    for field, value in message.ListFields():
        name = prefix + field.name
        repeated = field.label == FieldDescriptor.LABEL_REPEATED
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if repeated:
                for i, item in enumerate(value):
                    found.extend(_path_fields(item, "%s[%d]." % (name, i)))
            else:
                found.extend(_path_fields(value, name + "."))
        elif field.type == FieldDescriptor.TYPE_STRING and _is_path_field(field.name):
            values = list(value) if repeated else [value]
            for i, item in enumerate(values):
                if item:
                    found.append((name if not repeated else "%s[%d]" % (name, i), item))
    return found


def config(request):
    _bare_tzrec_package()
    from google.protobuf import text_format

    from tzrec.protos import data_pb2
    from tzrec.utils import config_util

    path = request["in"]
    try:
        pipeline = config_util.load_pipeline_config(path)
    except text_format.ParseError as exc:
        return {"error": "%s:%s" % (path, exc)}
    edits = request.get("edits") or {}
    if edits:
        try:
            config_util.edit_config(pipeline, edits)
        except Exception as exc:  # tzrec's edit_config raises asserts, ValueError, AttributeError...
            return {"error": "edit_config %s: %s: %s" % (json.dumps(edits, sort_keys=True),
                                                        type(exc).__name__, exc)}
    if request.get("out"):
        config_util.save_message(pipeline, request["out"])
    model = pipeline.model_config.WhichOneof("model") if pipeline.HasField("model_config") else None
    data = pipeline.data_config
    export = pipeline.export_config
    facts = {
        "model": model,
        "fg_mode": data_pb2.FgMode.Name(data.fg_mode),
        "dataset_type": data_pb2.DatasetType.Name(data.dataset_type),
        "sampler": data.WhichOneof("sampler"),
        "label_fields": list(data.label_fields),
        "features": sorted({fc.WhichOneof("feature") and getattr(fc, fc.WhichOneof("feature")).feature_name
                            for fc in pipeline.feature_configs} - {None}),
        "exporter_type": export.exporter_type,
        "best_exporter_metric": export.best_exporter_metric if export.HasField("best_exporter_metric") else None,
        "metric_larger_is_better": export.metric_larger_is_better,
        "train_input_path": pipeline.train_input_path,
        "eval_input_path": pipeline.eval_input_path,
        "model_dir": pipeline.model_dir,
        "batch_size": data.batch_size,
        "num_epochs": pipeline.train_config.num_epochs,
        "num_steps": pipeline.train_config.num_steps,
    }
    return {"paths": _path_fields(pipeline), "facts": facts}


def canonical(request):
    """What a pipeline.config means, as a digest: tzrec's loader, then deterministic bytes."""
    import hashlib

    _bare_tzrec_package()
    from google.protobuf import json_format, text_format

    from tzrec.utils import config_util

    path = request["in"]
    try:
        pipeline = config_util.load_pipeline_config(path)
    except (text_format.ParseError, json_format.ParseError) as exc:
        return {"error": "%s:%s" % (path, exc)}
    # partial: recbuild sets the required paths (train_input_path, model_dir ...) itself
    data = pipeline.SerializePartialToString(deterministic=True)
    return {"sha256": hashlib.sha256(data).hexdigest(), "message": pipeline.DESCRIPTOR.full_name}


def scrub_dcp(request):
    """Replace the build folder in each DCP .metadata's checkpoint_id by a path relative to it."""
    import pickle

    root = os.path.abspath(request["dir"])
    changed = []
    for folder, _dirs, files in os.walk(root):
        if ".metadata" not in files:
            continue
        path = os.path.join(folder, ".metadata")
        with open(path, "rb") as fh:
            metadata = pickle.load(fh)
        storage = getattr(metadata, "storage_meta", None)
        old = getattr(storage, "checkpoint_id", None)
        if storage is None or old is None:
            continue
        relative = os.path.relpath(folder, root)
        # save_id is a random uuid torch writes and never reads: cleared, a seeded training
        # rewrites identical bytes
        if str(old) == relative and getattr(storage, "save_id", None) is None:
            continue
        storage.checkpoint_id = type(old)(relative) if not isinstance(old, str) else relative
        if hasattr(storage, "save_id"):
            storage.save_id = None
        with open(path, "wb") as fh:
            pickle.dump(metadata, fh)
        changed.append(os.path.relpath(path, root))
    return {"changed": sorted(changed)}


COMMANDS = {"probe": probe, "config": config, "canonical": canonical, "scrub_dcp": scrub_dcp}


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        sys.stderr.write("usage: helper.py {%s} < request.json\n" % "|".join(COMMANDS))
        return 2
    request = json.loads(sys.stdin.read() or "{}")
    try:
        answer = COMMANDS[argv[1]](request)
    except Exception as exc:  # reported to recbuild as data; recbuild turns it into a BuildError
        answer = {"error": "%s: %s" % (type(exc).__name__, exc), "traceback": traceback.format_exc()}
    sys.stdout.write(json.dumps(answer, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
