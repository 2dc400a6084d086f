"""Feature specs, ``fg.json`` and the conversion of Arrow batches into a tower's input dict.

One module owns the mapping "parquet column -> model input tensor" so that training, export and
batch inference (``ml/predictor/``) feed a model exactly the same way:

- id feature        -> ``int64 [B]`` raw ids; string ids become int64 via :func:`hash_string_ids`
- numeric feature   -> ``float32 [B]``
- sequence feature  -> ``int64 [B, max_len]`` raw ids, padded with ``-1``, truncated to the first
  ``max_len`` values. Accepted columns: ``list<int*>``, ``list<string>``, or a delimited string
  (``"3;17;42"``, delimiter from the spec, default ``;``). A null or empty sequence is all padding.

Everything is vectorised over the batch (numpy/pyarrow compute); the only Python loop is over the
*unique* string values of a column when hashing them. pyarrow is imported at module level: this
module is imported by builders inside ``build`` only, never when a recipe is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recbuild.common.ids import PAD_ID, hash_string_ids  # noqa: F401  (re-exported: ids are part of the feature contract)
from recbuild.errors import InputError

if TYPE_CHECKING:  # torch is imported lazily: feature specs and fg.json need no torch
    import torch

FG_FILE = "fg.json"
DEFAULT_SEQUENCE_DELIMITER = ";"

KINDS = ("id", "numeric", "sequence")
GROUPS = ("user", "item")
VALUE_TYPES = ("int64", "string", "float")

# Our kind names <-> TorchEasyRec's fg feature_type names.
_KIND_TO_FG = {"id": "id_feature", "numeric": "raw_feature", "sequence": "sequence_id_feature"}
_FG_TO_KIND = {v: k for k, v in _KIND_TO_FG.items()}


@dataclass(frozen=True)
class FeatureSpec:
    """One model input: which column feeds it and how it is turned into a tensor.

    ``value_type`` is the type of the *values* the model was trained on: ``int64`` (raw integer ids),
    ``string`` (string ids, hashed with :func:`hash_string_ids`) or ``float`` (numeric features).
    """

    name: str
    kind: str  # id | numeric | sequence
    group: str  # user | item
    column: str | None = None  # parquet column; defaults to name
    value_type: str | None = None  # int64 | string | float; default by kind
    # id / sequence: the model's bucket count and embedding dim. Not written to fg.json (the model
    # owns them: pipeline.yaml); read from fg.json files of older exports, for information only.
    buckets: int | None = None
    dim: int | None = None
    max_len: int | None = None  # sequence only
    delimiter: str = DEFAULT_SEQUENCE_DELIMITER  # sequence stored as a delimited string

    def __post_init__(self) -> None:
        # Frozen dataclass: fill defaults through object.__setattr__ once, then validate.
        if self.column is None:
            object.__setattr__(self, "column", self.name)
        if self.value_type is None:
            object.__setattr__(self, "value_type", "float" if self.kind == "numeric" else "int64")
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.group not in GROUPS:
            problems.append(f"group must be one of {', '.join(GROUPS)}, got {self.group!r}")
        if self.value_type not in VALUE_TYPES:
            problems.append(f"value_type must be one of {', '.join(VALUE_TYPES)}, got {self.value_type!r}")
        elif self.kind == "numeric" and self.value_type != "float":
            problems.append(f"a numeric feature has value_type 'float', got {self.value_type!r}")
        elif self.kind != "numeric" and self.value_type == "float":
            problems.append(f"an {self.kind} feature has value_type 'int64' or 'string', got 'float'")
        if self.kind == "sequence" and not (isinstance(self.max_len, int) and self.max_len > 0):
            problems.append(f"a sequence feature needs a positive max_len, got {self.max_len!r}")
        if not self.delimiter:
            problems.append("delimiter must be a non-empty string")
        if problems:
            raise ValueError(f"feature {self.name!r}: " + "; ".join(problems))

    # -- fg.json (TorchEasyRec's shape) ---------------------------------------------------------
    def to_fg(self) -> dict[str, Any]:
        """This feature's fg.json entry, keys and values as TorchEasyRec's ``fg_json()`` writes them.

        No bucketizer (``hash_bucket_size``, ``num_buckets``, vocab, boundaries): the exported
        module maps raw ids to rows itself (``mix64(id) % buckets``), so a feature generator that
        also hashed would feed it wrong ids. Without one, FG passes the value through as
        ``value_type``. The bucket count and embedding dim are the model's (pipeline.yaml).
        """
        entry: dict[str, Any] = {
            "feature_type": _KIND_TO_FG[self.kind],
            "feature_name": self.name,
            "default_value": "" if self.kind == "id" else "0",  # tzrec's proto defaults
            "expression": f"{self.group}:{self.column}",
            "value_type": self.value_type,
        }
        if self.kind == "numeric":
            return entry
        entry["need_prefix"] = False
        if self.kind == "sequence":
            entry["sequence_delim"] = self.delimiter
            entry["sequence_length"] = self.max_len
        entry["value_dim"] = 1
        return entry

    @classmethod
    def from_fg(cls, entry: dict[str, Any]) -> "FeatureSpec":
        try:
            feature_type = entry["feature_type"]
            name = entry["feature_name"]
            expression = entry.get("expression") or f"item:{name}"
        except KeyError as exc:
            raise ValueError(f"fg.json entry {entry!r} lacks {exc.args[0]!r}") from None
        if feature_type not in _FG_TO_KIND:
            raise ValueError(f"fg.json feature {name!r}: unsupported feature_type {feature_type!r} "
                             f"(supported: {', '.join(_FG_TO_KIND)})")
        group, sep, column = str(expression).partition(":")
        if not sep:
            raise ValueError(f"fg.json feature {name!r}: expression must be 'user:<column>' or "
                             f"'item:<column>', got {expression!r}")
        return cls(
            name=name,
            kind=_FG_TO_KIND[feature_type],
            group=group,
            column=column,
            value_type=entry.get("value_type"),
            # TorchEasyRec names int buckets num_buckets and hashed ones hash_bucket_size.
            buckets=entry.get("hash_bucket_size", entry.get("num_buckets")),
            dim=entry.get("embedding_dim"),
            max_len=entry.get("sequence_length"),
            delimiter=entry.get("sequence_delim", DEFAULT_SEQUENCE_DELIMITER),
        )


def specs_to_fg(specs: Iterable[FeatureSpec]) -> dict[str, Any]:
    return {"features": [s.to_fg() for s in specs]}


def write_fg(folder: str | Path, specs: Iterable[FeatureSpec]) -> Path:
    """Write ``fg.json`` as TorchEasyRec's export does (``json.dump(..., indent=4)``, its key order,
    no trailing newline): the same bytes for the same features."""
    path = Path(folder) / FG_FILE
    path.write_text(json.dumps(specs_to_fg(specs), indent=4), encoding="utf-8")
    return path


def load_fg(folder: str | Path) -> list[FeatureSpec]:
    """The features an exported module reads, from ``<folder>/fg.json``, in file order."""
    path = Path(folder) / FG_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path} not found: the exported module folder must hold fg.json "
                         "(rebuild the export/towers artifact)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); rebuild the export/towers artifact") from None
    features = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(features, list):
        raise InputError(f"{path}: expected an object with a 'features' list")
    try:
        specs = [FeatureSpec.from_fg(entry) for entry in features]
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"{path}: feature names appear more than once: {', '.join(duplicates)}")
    return specs


# -- string id hashing ----------------------------------------------------------------------------
def is_stringlike(t: pa.DataType) -> bool:
    """String or binary, possibly dictionary-encoded: values that are hashed into ids."""
    if pa.types.is_dictionary(t):
        return is_stringlike(t.value_type)
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
            or pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t))


def _is_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
            or pa.types.is_list_view(t) or pa.types.is_large_list_view(t))


def _column_problem(spec: FeatureSpec, t: pa.DataType) -> str | None:
    """Why column type ``t`` cannot feed ``spec``, or None when it can."""
    if spec.kind == "numeric":
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            return None
        return "a numeric feature needs an integer or floating column"
    if spec.kind == "id":
        if spec.value_type == "int64":
            if pa.types.is_integer(t) or (pa.types.is_dictionary(t) and pa.types.is_integer(t.value_type)):
                return None
            return ("the model was trained on int64 ids, so the column must be an integer type "
                    "(hashing strings here would give different ids than in training)")
        if is_stringlike(t):
            return None
        return "the model was trained on string ids, so the column must be a string type"
    # sequence
    if is_stringlike(t):
        return None  # delimited string: tokens are parsed (int64) or hashed (string)
    if _is_list(t):
        inner = t.value_type
        if spec.value_type == "int64" and pa.types.is_integer(inner):
            return None
        if spec.value_type == "string" and is_stringlike(inner):
            return None
        want = "list<int64>" if spec.value_type == "int64" else "list<string>"
        return f"the model was trained on {spec.value_type} sequence ids, so the column must be {want} " \
               f"or a {spec.delimiter!r}-delimited string"
    return "a sequence feature needs a list column or a delimited string column"


def validate_columns(schema: pa.Schema, specs: Sequence[FeatureSpec], where: str = "the input") -> None:
    """Raise one :class:`InputError` listing every missing or mistyped feature column."""
    problems = []
    present = set(schema.names)
    for spec in specs:
        if spec.column not in present:
            hint = _close_match(spec.column, schema.names)
            problems.append(f"column {spec.column!r} (feature {spec.name!r}, {spec.kind}) is missing"
                            + (f"; did you mean {hint!r}?" if hint else ""))
            continue
        field_type = schema.field(spec.column).type
        why = _column_problem(spec, field_type)
        if why:
            problems.append(f"column {spec.column!r} (feature {spec.name!r}) has type {field_type}: {why}")
    if problems:
        raise InputError(f"{where} does not match the model's features (fg.json): "
                         + "; ".join(problems)
                         + f" (columns present: {', '.join(schema.names) or 'none'})")


def _close_match(name: str, candidates: Sequence[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.7)
    return found[0] if found else None


# -- Arrow <-> numpy without pandas -----------------------------------------------------------------
# pyarrow's own bridge (Array.to_numpy, pa.array(ndarray)) imports pandas on first use when it is
# installed: 0.2-0.3 s and ~40 MB in every process that converts a batch. These two cover the hot
# paths (null-free numbers) by viewing the buffers directly; anything else takes pyarrow's bridge.
_NUMPY_TYPES = {pa.int8(): np.int8, pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64,
                pa.uint8(): np.uint8, pa.uint16(): np.uint16, pa.uint32(): np.uint32,
                pa.uint64(): np.uint64, pa.float32(): np.float32, pa.float64(): np.float64}
_ARROW_TYPES = {np.dtype(numpy_type): arrow_type for arrow_type, numpy_type in _NUMPY_TYPES.items()}


def numpy_view(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The values of ``arr`` as numpy: a read-only zero-copy view for null-free numbers (as
    ``to_numpy`` would give), a converted copy otherwise."""
    arr = _as_array(arr)
    dtype = _NUMPY_TYPES.get(arr.type)
    if dtype is None or arr.null_count:
        return arr.to_numpy(zero_copy_only=False)
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr),
                         offset=arr.offset * np.dtype(dtype).itemsize)


def arrow_view(values: np.ndarray) -> pa.Array:
    """A 1-d numeric numpy array as an Arrow array over the same memory (no nulls)."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(_ARROW_TYPES[values.dtype], len(values), [None, pa.py_buffer(values)])


# -- batch -> tensors ------------------------------------------------------------------------------
def _as_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


def _first_null_row(arr: pa.Array) -> int:
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    return int(np.argmin(valid))


def _ids_to_numpy(arr: pa.Array, spec: FeatureSpec) -> np.ndarray:
    """A flat id array (no nulls) -> int64 numpy."""
    if is_stringlike(arr.type):
        return hash_string_ids(arr)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if arr.type != pa.int64():
        try:
            arr = arr.cast(pa.int64())  # safe cast: uint64 beyond int64 range raises
        except pa.ArrowInvalid as exc:
            raise InputError(f"column {spec.column!r} (feature {spec.name!r}): ids do not fit "
                             f"int64: {exc}") from None
    return numpy_view(arr)


def id_column_to_numpy(arr: pa.Array, spec: FeatureSpec, row_offset: int = 0) -> np.ndarray:
    if arr.null_count:
        raise InputError(
            f"column {spec.column!r} (feature {spec.name!r}) has a null at row "
            f"{row_offset + _first_null_row(arr)}; every row needs an id: fill or drop such rows")
    return _ids_to_numpy(arr, spec)


def _numeric_to_numpy(arr: pa.Array, spec: FeatureSpec, row_offset: int) -> np.ndarray:
    if arr.null_count:
        raise InputError(
            f"column {spec.column!r} (numeric feature {spec.name!r}) has a null at row "
            f"{row_offset + _first_null_row(arr)}; fill nulls (e.g. with 0) before building")
    if arr.type != pa.float32():
        arr = arr.cast(pa.float32(), safe=False)  # float64/int -> float32 rounds, as training does
    return numpy_view(arr)


def _split_delimited(arr: pa.Array, spec: FeatureSpec) -> pa.Array:
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.string())
    # "" would split into [""]; treat it as an empty sequence instead.
    arr = pc.if_else(pc.equal(arr, ""), pa.scalar(None, arr.type), arr)
    return pc.split_pattern(arr, pattern=spec.delimiter)


def _sequence_to_numpy(arr: pa.Array, spec: FeatureSpec) -> np.ndarray:
    max_len = int(spec.max_len)
    if is_stringlike(arr.type):
        arr = _split_delimited(arr, spec)
    if pa.types.is_list_view(arr.type) or pa.types.is_large_list_view(arr.type) \
            or pa.types.is_fixed_size_list(arr.type):
        arr = arr.cast(pa.large_list(arr.type.value_type))
    n_rows = len(arr)
    offsets = numpy_view(arr.offsets).astype(np.int64, copy=False)
    lengths = np.diff(offsets)
    if arr.null_count:  # a null list may still span values in the child array: ignore them
        lengths = np.where(arr.is_valid().to_numpy(zero_copy_only=False), lengths, 0)
    start, stop = int(offsets[0]), int(offsets[-1])
    # `.values` ignores the slice offset of the list array; keep only the span this slice uses.
    child = arr.values.slice(start, stop - start)
    if child.null_count and not is_stringlike(child.type):
        # A null element is "no id here": it becomes padding (hash_string_ids does the same).
        child = child.fill_null(PAD_ID)
    if is_stringlike(child.type):
        if spec.value_type == "string":
            flat = hash_string_ids(child)
        else:
            try:
                flat = numpy_view(pc.cast(child, pa.int64()))
            except pa.ArrowInvalid as exc:
                raise InputError(
                    f"column {spec.column!r} (sequence feature {spec.name!r}, int64 ids): a token "
                    f"is not an integer ({exc}); check the delimiter ({spec.delimiter!r})") from None
    else:
        flat = _ids_to_numpy(child, spec)
    out = np.full((n_rows, max_len), PAD_ID, dtype=np.int64)
    if len(flat) == 0:
        return out
    # Gather the first max_len values of every row in one fancy-indexing step: position j of row i
    # reads flat[offsets[i] - start + j] when j < length(i), else stays padding.
    positions = np.arange(max_len, dtype=np.int64)
    keep = positions[None, :] < np.minimum(lengths, max_len)[:, None]
    index = (offsets[:-1] - start)[:, None] + positions[None, :]
    out[keep] = flat[index[keep]]
    return out


def batch_to_numpy(batch: pa.RecordBatch | pa.Table, specs: Sequence[FeatureSpec],
                   row_offset: int = 0) -> Dict[str, np.ndarray]:
    """Like :func:`batch_to_inputs`, but numpy arrays (useful off the torch thread)."""
    # A few type checks per batch: negligible next to the conversion, and it keeps a mistyped
    # column from being silently hashed or cast into ids the model never saw in training.
    validate_columns(batch.schema, specs)
    arrays: Dict[str, np.ndarray] = {}
    for spec in specs:
        column = _as_array(batch.column(spec.column))
        if spec.kind == "id":
            arrays[spec.name] = id_column_to_numpy(column, spec, row_offset)
        elif spec.kind == "numeric":
            arrays[spec.name] = _numeric_to_numpy(column, spec, row_offset)
        else:
            arrays[spec.name] = _sequence_to_numpy(column, spec)
    return arrays


def numpy_to_tensors(arrays: Dict[str, np.ndarray]) -> Dict[str, "torch.Tensor"]:
    import torch

    tensors = {}
    for name, value in arrays.items():
        # Arrow-backed numpy views are read-only; torch wants writable memory. The copy is small
        # (one batch) and keeps the tensor independent of the Arrow buffers.
        if not value.flags.writeable or not value.flags.c_contiguous:
            value = np.array(value, copy=True, order="C")
        tensors[name] = torch.from_numpy(value)
    return tensors


def batch_to_inputs(batch: pa.RecordBatch | pa.Table, specs: Sequence[FeatureSpec],
                    row_offset: int = 0) -> Dict[str, "torch.Tensor"]:
    """Turn one Arrow batch into the ``Dict[str, Tensor]`` an exported module takes.

    ``row_offset`` is the batch's first row in the whole input, used only in error messages.
    Raises :class:`InputError` on a missing/mistyped column or a null id/numeric value.
    """
    return numpy_to_tensors(batch_to_numpy(batch, specs, row_offset))
