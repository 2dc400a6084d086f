"""feature_io: fg.json round trip, string-id hashing, column validation, batch -> tensors."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
import xxhash

from recbuild.errors import InputError
from recbuild.ml.feature_io import (PAD_ID, FeatureSpec, batch_to_inputs, hash_string_ids, load_fg,
                                 validate_columns, write_fg)

SPECS = [
    FeatureSpec("item_id", "id", "item", buckets=1000, dim=8),
    FeatureSpec("cate", "id", "item", column="cate_name", value_type="string", buckets=50, dim=4),
    FeatureSpec("price", "numeric", "item"),
    FeatureSpec("clicks", "sequence", "user", buckets=1000, dim=8, max_len=3),
    FeatureSpec("tags", "sequence", "user", value_type="string", max_len=2, delimiter="|"),
]


def expected_hash(value: str) -> int:
    return xxhash.xxh3_64_intdigest(value.encode("utf-8")) & ((1 << 63) - 1)


# -- fg.json ---------------------------------------------------------------------------------------
def test_fg_round_trip_in_torcheasyrec_shape(tmp_path):
    write_fg(tmp_path, SPECS)
    text = (tmp_path / "fg.json").read_text()
    doc = json.loads(text)
    assert text == json.dumps(doc, indent=4)  # as tzrec.export writes it: indent 4, no newline at the end
    # keys in the order tzrec's IdFeature.fg_json() writes them; no bucketizer: the graph hashes ids
    assert list(doc["features"][0].items()) == [
        ("feature_type", "id_feature"), ("feature_name", "item_id"), ("default_value", ""),
        ("expression", "item:item_id"), ("value_type", "int64"), ("need_prefix", False), ("value_dim", 1)]
    assert doc["features"][1]["value_type"] == "string" and doc["features"][1]["expression"] == "item:cate_name"
    assert doc["features"][2] == {"feature_type": "raw_feature", "feature_name": "price", "default_value": "0",
                                  "expression": "item:price", "value_type": "float"}
    assert doc["features"][3]["feature_type"] == "sequence_id_feature"
    assert doc["features"][3]["sequence_length"] == 3 and doc["features"][4]["sequence_delim"] == "|"
    for entry in doc["features"]:
        assert not {"hash_bucket_size", "num_buckets", "vocab_list", "boundaries", "embedding_dim"} & set(entry)
    # what a reader needs comes back; the model's buckets and dims live in pipeline.yaml only
    reader_fields = [(s.name, s.kind, s.group, s.column, s.value_type, s.max_len, s.delimiter) for s in SPECS]
    assert [(s.name, s.kind, s.group, s.column, s.value_type, s.max_len, s.delimiter)
            for s in load_fg(tmp_path)] == reader_fields


def test_fg_of_older_exports_still_loads(tmp_path):
    """fg.json written before the tzrec shape (sorted keys, hash_bucket_size, embedding_dim)."""
    (tmp_path / "fg.json").write_text(json.dumps({"features": [
        {"embedding_dim": 4, "expression": "item:cate_name", "feature_name": "cate", "feature_type": "id_feature",
         "hash_bucket_size": 50, "value_type": "string"}]}, indent=2, sort_keys=True) + "\n")
    assert load_fg(tmp_path) == [SPECS[1]]


def test_fg_accepts_num_buckets_and_defaults():
    spec = FeatureSpec.from_fg({"feature_type": "id_feature", "feature_name": "shop",
                                "expression": "item:shop_id", "num_buckets": 10})
    assert (spec.column, spec.group, spec.value_type, spec.buckets) == ("shop_id", "item", "int64", 10)


def test_load_fg_errors(tmp_path):
    with pytest.raises(InputError, match="fg.json not found"):
        load_fg(tmp_path)
    (tmp_path / "fg.json").write_text('{"features": [{"feature_type": "lookup_feature", '
                                      '"feature_name": "x", "expression": "item:x"}]}')
    with pytest.raises(InputError, match="unsupported feature_type 'lookup_feature'"):
        load_fg(tmp_path)
    (tmp_path / "fg.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_fg(tmp_path)


def test_spec_validation():
    with pytest.raises(ValueError, match="positive max_len"):
        FeatureSpec("s", "sequence", "user")
    with pytest.raises(ValueError, match="group must be one of"):
        FeatureSpec("a", "id", "context")
    with pytest.raises(ValueError, match="numeric feature has value_type 'float'"):
        FeatureSpec("a", "numeric", "item", value_type="int64")


# -- hashing ---------------------------------------------------------------------------------------
def test_hash_is_xxh3_of_utf8_masked_to_63_bits():
    values = ["a", "b", "a", "ünïcode", ""]
    got = hash_string_ids(pa.array(values))
    assert got.dtype == np.int64
    assert got.tolist() == [expected_hash(v) for v in values]
    assert (got >= 0).all()


def test_hash_same_for_every_input_form():
    values = ["x1", "y2", "x1"]
    reference = hash_string_ids(pa.array(values))
    forms = [np.array(values), np.array(values, dtype=object), pa.array(values, pa.large_string()),
             pa.array([v.encode() for v in values], pa.binary()), pa.array(values).dictionary_encode(),
             pa.chunked_array([pa.array(values[:1]), pa.array(values[1:])]), values]
    for form in forms:
        np.testing.assert_array_equal(hash_string_ids(form), reference)


def test_hash_nulls_become_padding():
    assert hash_string_ids(pa.array(["a", None])).tolist() == [expected_hash("a"), PAD_ID]


# -- validation ------------------------------------------------------------------------------------
def test_validate_lists_every_problem():
    schema = pa.schema([("item_idd", pa.int64()), ("cate_name", pa.int64()), ("price", pa.string()),
                        ("clicks", pa.list_(pa.string())), ("tags", pa.float32())])
    with pytest.raises(InputError) as err:
        validate_columns(schema, SPECS, where="items.parquet")
    message = str(err.value)
    assert message.startswith("items.parquet does not match")
    assert "column 'item_id' (feature 'item_id', id) is missing; did you mean 'item_idd'?" in message
    assert "'cate_name' (feature 'cate') has type int64" in message
    assert "'price' (feature 'price') has type string: a numeric feature needs" in message
    assert "'clicks' (feature 'clicks') has type list<item: string>" in message
    assert "'tags' (feature 'tags') has type float" in message


def test_validate_accepts_every_supported_type():
    schema = pa.schema([("item_id", pa.int32()), ("cate_name", pa.large_string()),
                        ("price", pa.float64()), ("clicks", pa.string()),
                        ("tags", pa.large_list(pa.string()))])
    validate_columns(schema, SPECS)


# -- batch -> tensors ------------------------------------------------------------------------------
def sample_batch() -> pa.RecordBatch:
    return pa.record_batch({
        "item_id": pa.array([5, 6, 7, 8], pa.int32()),
        "cate_name": pa.array(["shoes", "hats", "shoes", "bags"]),
        "price": pa.array([1.5, 2.0, 3.25, 0.0], pa.float64()),
        "clicks": pa.array([[1, 2, 3, 4], [], None, [9]], pa.list_(pa.int64())),
        "tags": pa.array(["a|b|c", "", None, "d"]),
        "unused": pa.array(["x"] * 4),
    })


def test_batch_to_inputs_types_shapes_and_values():
    inputs = batch_to_inputs(sample_batch(), SPECS)
    assert set(inputs) == {s.name for s in SPECS}
    assert inputs["item_id"].dtype == torch.int64 and inputs["item_id"].tolist() == [5, 6, 7, 8]
    assert inputs["cate"].tolist() == [expected_hash(v) for v in ["shoes", "hats", "shoes", "bags"]]
    assert inputs["price"].dtype == torch.float32
    assert inputs["price"].tolist() == [1.5, 2.0, 3.25, 0.0]
    # truncated to the first max_len values, padded with -1; empty and null lists are all padding
    assert inputs["clicks"].tolist() == [[1, 2, 3], [-1, -1, -1], [-1, -1, -1], [9, -1, -1]]
    a, b, d = (expected_hash(x) for x in "abd")
    assert inputs["tags"].tolist() == [[a, b], [-1, -1], [-1, -1], [d, -1]]


def test_sliced_batches_give_the_rows_of_the_slice():
    batch = sample_batch()
    whole = batch_to_inputs(batch, SPECS)
    for offset, length in [(1, 3), (2, 1), (3, 1)]:
        part = batch_to_inputs(batch.slice(offset, length), SPECS)
        for name in whole:
            assert torch.equal(part[name], whole[name][offset:offset + length]), name


def test_sequence_from_delimited_int_string_and_null_elements():
    specs = [FeatureSpec("seq", "sequence", "user", max_len=4),
             FeatureSpec("lst", "sequence", "user", max_len=2)]
    batch = pa.record_batch({"seq": pa.array(["10;20", "7", "", "1;2;3;4;5"]),
                             "lst": pa.array([[1, None], [None, 3], [4], []], pa.list_(pa.int32()))})
    inputs = batch_to_inputs(batch, specs)
    assert inputs["seq"].tolist() == [[10, 20, -1, -1], [7, -1, -1, -1], [-1] * 4, [1, 2, 3, 4]]
    assert inputs["lst"].tolist() == [[1, -1], [-1, 3], [4, -1], [-1, -1]]


def test_non_integer_token_in_int_sequence():
    spec = FeatureSpec("seq", "sequence", "user", max_len=2)
    with pytest.raises(InputError, match=r"'seq'.*not an integer.*delimiter \(';'\)"):
        batch_to_inputs(pa.record_batch({"seq": pa.array(["1,2"])}), [spec])


def test_nulls_in_id_and_numeric_columns_name_the_row():
    spec_id, spec_num = SPECS[0], SPECS[2]
    with pytest.raises(InputError, match=r"'item_id'.*null at row 12"):
        batch_to_inputs(pa.record_batch({"item_id": pa.array([1, None])}), [spec_id], row_offset=11)
    with pytest.raises(InputError, match=r"'price'.*null at row 0"):
        batch_to_inputs(pa.record_batch({"price": pa.array([None, 1.0])}), [spec_num])


def test_batch_to_inputs_rejects_mistyped_column():
    batch = pa.record_batch({"item_id": pa.array(["5"])})
    with pytest.raises(InputError, match="trained on int64 ids"):
        batch_to_inputs(batch, [SPECS[0]])


def test_uint64_beyond_int64_is_an_error():
    batch = pa.record_batch({"item_id": pa.array([2**63 + 1], pa.uint64())})
    with pytest.raises(InputError, match="do not fit int64"):
        batch_to_inputs(batch, [SPECS[0]])


def test_tensors_are_writable_and_own_their_memory():
    inputs = batch_to_inputs(sample_batch(), SPECS)
    inputs["item_id"][0] = 99  # would fail (or warn) on a read-only Arrow view
    assert inputs["item_id"][0] == 99


def test_table_with_several_chunks():
    table = pa.Table.from_batches([sample_batch(), sample_batch()])
    inputs = batch_to_inputs(table, SPECS)
    assert inputs["clicks"].shape == (8, 3)
    assert inputs["item_id"].tolist() == [5, 6, 7, 8] * 2


@pytest.mark.parametrize("arrow_type", [pa.int8(), pa.int32(), pa.int64(), pa.uint16(), pa.uint64(),
                                        pa.float32(), pa.float64()])
def test_numpy_view_matches_pyarrow_for_slices_and_chunks(arrow_type):
    from recbuild.ml.feature_io import arrow_view, numpy_view

    arr = pa.array(np.arange(50) % 7, type=arrow_type)
    for piece in (arr, arr.slice(13, 20), pa.chunked_array([arr.slice(0, 5), arr.slice(30, 9)])):
        got = numpy_view(piece)
        want = piece.to_numpy() if isinstance(piece, pa.Array) else piece.combine_chunks().to_numpy()
        assert got.dtype == want.dtype and np.array_equal(got, want)
    back = arrow_view(numpy_view(arr.slice(13, 20)))
    assert back.equals(arr.slice(13, 20))


def test_numpy_view_with_nulls_or_other_types_falls_back():
    from recbuild.ml.feature_io import numpy_view

    with_nulls = pa.array([1.0, None, 3.0], type=pa.float32())
    assert np.isnan(numpy_view(with_nulls)[1])
    assert list(numpy_view(pa.array(["a", "b"]))) == ["a", "b"]


def test_batch_conversion_does_not_import_pandas():
    # pyarrow's numpy bridge imports pandas (0.2-0.3 s per process); the hot paths must not.
    import subprocess
    import sys

    code = """
import sys
import numpy as np, pyarrow as pa
from recbuild.ml import predictor
from recbuild.ml.feature_io import FeatureSpec, batch_to_numpy
from recbuild.ml.feature_io import arrow_view  # pa.array() itself would import pandas
tags = pa.ListArray.from_arrays(arrow_view(np.arange(0, 21, 2, dtype=np.int32)), arrow_view(np.arange(20)))
batch = pa.record_batch({"item_id": arrow_view(np.arange(10)), "price": arrow_view(np.ones(10, np.float32)),
                         "tags": tags})
specs = [FeatureSpec("item_id", "id", "item", buckets=5, dim=4), FeatureSpec("price", "numeric", "item"),
         FeatureSpec("tags", "sequence", "item", buckets=5, dim=4, max_len=3)]
batch_to_numpy(batch, specs)
predictor.embedding_column(np.ones((10, 4), np.float32), "fixed_size_list")
predictor.embedding_column(np.ones((10, 4), np.float32), "list_double")
print("pandas" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
