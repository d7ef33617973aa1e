import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve.features import FeatureSpec
from serve.schemas import InvalidInput, parse_invocation

SPEC = FeatureSpec(
    names=("x1", "cat"), kinds=("numeric", "categorical"), categories={"cat": ("a", "b")}
)


def test_all_four_formats_give_the_same_frame():
    bodies = [
        {"dataframe_split": {"columns": ["x1", "cat"], "data": [[1.5, "a"], [2, "b"]]}},
        {"dataframe_records": [{"x1": 1.5, "cat": "a"}, {"x1": 2, "cat": "b"}]},
        {"instances": [{"x1": 1.5, "cat": "a"}, {"x1": 2, "cat": "b"}]},
        {"inputs": {"x1": [1.5, 2], "cat": ["a", "b"]}},
    ]
    frames = [SPEC.frame(parse_invocation(b)) for b in bodies]
    for frame in frames:
        np.testing.assert_allclose(frame["x1"].to_numpy(), [1.5, 2.0])
        assert frame["cat"].cat.codes.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1, 2], "JSON object"),
        ({}, "exactly one of"),
        ({"instances": [], "inputs": []}, "exactly one of"),
        ({"dataframe_split": {"columns": ["x1"]}}, "'columns'"),
        ({"dataframe_split": {"columns": ["x1"], "data": [[1, 2]]}}, "1 values"),
        ({"dataframe_split": {"columns": ["x1", "x1"], "data": []}}, "repeats"),
        ({"dataframe_records": {"x1": 1}}, "list of records"),
        ({"dataframe_records": [1]}, "must be an object"),
        ({"dataframe_records": []}, "no rows"),
        ({"dataframe_records": [{"x1": [1]}]}, "nested"),
        ({"inputs": {"x1": [1, 2], "cat": ["a"]}}, "different lengths"),
        ({"inputs": {"x1": 1}}, "list of values"),
    ],
)
def test_malformed_bodies_say_what_is_wrong(body, message):
    with pytest.raises(InvalidInput, match=message):
        parse_invocation(body)


def test_row_limit():
    with pytest.raises(InvalidInput, match="limit of 2"):
        parse_invocation({"dataframe_records": [{"x1": 1}] * 3}, max_rows=2)


def test_missing_feature_and_wrong_type_are_invalid_input():
    with pytest.raises(InvalidInput, match=r"missing feature column\(s\) \['cat'\]"):
        SPEC.frame(parse_invocation({"dataframe_records": [{"x1": 1}]}))
    with pytest.raises(InvalidInput, match="'x1' must be numeric, but got 'high'"):
        SPEC.frame(parse_invocation({"dataframe_records": [{"x1": "high", "cat": "a"}]}))
    with pytest.raises(InvalidInput, match="'x1' must be numeric"):
        SPEC.frame(parse_invocation({"dataframe_records": [{"x1": True, "cat": "a"}]}))


def test_unseen_category_and_null_become_missing():
    frame = SPEC.frame(parse_invocation({"dataframe_records": [
        {"x1": None, "cat": "zzz"}, {"x1": 3, "cat": None}]}))
    assert np.isnan(frame["x1"].iloc[0])
    assert frame["cat"].isna().tolist() == [True, True]


def test_spec_round_trips_and_learns_kinds():
    train = pd.DataFrame({"n": [1, 2, 3], "s": ["x", "y", None], "c": [7, 8, 7]})
    spec = FeatureSpec.learn(train, ("n", "s", "c"), categorical=("c",))
    assert spec.kinds == ("numeric", "categorical", "categorical")
    assert spec.categories == {"s": ("x", "y"), "c": ("7", "8")}
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert spec.example() == {"n": 0.0, "s": "x", "c": "7"}


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(
    st.sampled_from(["dataframe_split", "dataframe_records", "instances", "inputs", "x"]),
    json_values, max_size=2,
))
def test_any_json_body_either_parses_or_raises_invalid_input(body):
    try:
        frame = SPEC.frame(parse_invocation(body))
    except InvalidInput as exc:
        assert str(exc)  # the caller gets a message, never another exception
    else:
        assert list(frame.columns) == list(SPEC.names)
