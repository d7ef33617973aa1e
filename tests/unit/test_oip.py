"""Open Inference Protocol bodies, without Ray: layouts, checks, answers, metadata."""

from __future__ import annotations

import numpy as np
import pytest

from serve.features import FeatureSpec
from serve.oip import infer_response, model_metadata, parse_infer
from serve.schemas import InvalidInput

NAMES = ("x1", "x2", "cat")
SPEC = FeatureSpec(names=NAMES, kinds=("numeric", "numeric", "categorical"),
                   categories={"cat": ("a", "b")})


def column(name, data, datatype="FP64", shape=None):
    return {"name": name, "shape": shape or [len(data)], "datatype": datatype, "data": data}


def test_one_input_per_feature_column_in_any_order():
    body = {"id": "req-1", "inputs": [column("cat", ["b", "a"], "BYTES"),
                                      column("x2", [4, 5], "INT64"),
                                      column("x1", [0.3, None], shape=[2, 1]),
                                      column("unused", [1, 2])]}
    parsed = parse_infer(body, NAMES, max_rows=10)
    assert parsed.id == "req-1"
    frame = parsed.rows
    assert frame["x1"].tolist()[0] == 0.3 and frame["x1"].tolist()[1] is None
    assert frame["cat"].tolist() == ["b", "a"] and frame["x2"].tolist() == [4, 5]
    assert len(SPEC.frame(frame)) == 2  # what the model reads


def test_one_2d_input_holds_the_features_in_order_flat_or_nested():
    flat = {"inputs": [{"name": "input-0", "shape": [2, 2], "datatype": "FP32",
                        "data": [1.0, 2.0, 3.0, 4.0]}]}
    nested = {"inputs": [{"name": "input-0", "shape": [2, 2], "datatype": "FP32",
                          "data": [[1.0, 2.0], [3.0, 4.0]]}]}
    for body in (flat, nested):
        frame = parse_infer(body, ("a", "b"), max_rows=10).rows
        assert frame.to_dict("list") == {"a": [1.0, 3.0], "b": [2.0, 4.0]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({"inputs": []}, "non-empty list"),
        ({"inputs": [column("x1", [1.0])], "extra": 1}, "unknown key"),
        ({"id": 5, "inputs": [column("x1", [1.0])]}, "'id' must be a string"),
        ({"inputs": [{"name": "x1", "shape": [1], "data": [1.0]}]}, "missing ['datatype']"),
        ({"inputs": [column("x1", [1.0], "FP99")]}, "datatype must be one of"),
        ({"inputs": [column("x1", [1.0, 2.0], shape=[3])]}, "so 3 values"),
        ({"inputs": [column("x1", [1.0], shape=[1, 1, 1])]}, "shape must be"),
        ({"inputs": [column("x1", [-1.0], shape=[True])]}, "shape must be"),
        ({"inputs": [column("x1", ["a"])]}, "not FP64"),
        ({"inputs": [column("x1", [1.5], "INT32")]}, "not INT32"),
        ({"inputs": [column("x1", [True])]}, "not FP64"),
        ({"inputs": [column("x1", [[[1.0]]], shape=[1])]}, "must be flat"),
        ({"inputs": [column("x1", [1.0]), column("x1", [2.0])]}, "sent twice"),
        ({"inputs": [column("x1", [1.0]), column("x2", [1.0, 2.0])]}, "different numbers"),
        ({"inputs": [column("x1", [], shape=[0])]}, "no rows"),
        ({"inputs": [{"name": "m", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]},
         "one column per feature"),
        ({"inputs": [column("x1", [1.0])], "outputs": [{"name": "proba"}]}, "'outputs'"),
        ({"inputs": [column("x1", [1.0] * 11)]}, "limit of 10"),
    ],
)
def test_bad_bodies_are_refused_with_a_reason(body, message):
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_infer(body, NAMES, max_rows=10)


def test_the_answer_and_the_metadata():
    answer = infer_response("flights", "7", "r1", np.array([0.25, 0.5]))
    assert answer == {"model_name": "flights", "model_version": "7", "id": "r1",
                      "outputs": [{"name": "predict", "shape": [2], "datatype": "FP64",
                                   "data": [0.25, 0.5]}]}
    meta = model_metadata("flights", ["6", "7"], SPEC, "xgboost")
    assert meta["inputs"] == [{"name": "x1", "datatype": "FP64", "shape": [-1]},
                              {"name": "x2", "datatype": "FP64", "shape": [-1]},
                              {"name": "cat", "datatype": "BYTES", "shape": [-1]}]
    assert meta["versions"] == ["6", "7"] and meta["outputs"][0]["name"] == "predict"
