"""The lean request path answers exactly as the pandas path did (no Ray, no HTTP).

The reference is the path every request took before the lean one existed, written out here
from its parts: ``parse_invocation`` (a frame of objects), the empty-row check,
``FeatureSpec.frame`` (pandas categoricals over the stored vocabulary), the infinity check,
and ``inplace_predict`` on the frame, where XGBoost 3 re-codes the categoricals by name
against the categories stored in the model. Random valid bodies in every format, with
numbers, categories, nulls, NaN, unseen categories and ints, floats and bools where a
category is expected, must get the same predictions bit for bit, or the same refusal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import xgboost as xgb
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from serve.features import FeatureSpec
from serve.loader import LoadedModel
from serve.oip import parse_infer
from serve.schemas import InvalidInput, parse_invocation, parse_rows
from serve.scoring import LeanEncoder, Scorer, refuse_empty_rows

NAMES = ("x1", "c1", "x2", "c2")
KINDS = ("numeric", "categorical", "numeric", "categorical")


def _train(vocab1: tuple[str, ...], vocab2: tuple[str, ...], seed: int) -> xgb.Booster:
    rng = np.random.default_rng(seed)
    n = 2000
    frame = pd.DataFrame({
        "x1": rng.normal(size=n),
        "c1": pd.Categorical(rng.choice(list(vocab1), n), categories=list(vocab1)),
        "x2": np.where(rng.random(n) < 0.2, np.nan, rng.uniform(-5, 5, n)),
        "c2": pd.Categorical(rng.choice(list(vocab2), n), categories=list(vocab2)),
    })
    codes = frame["c1"].cat.codes.to_numpy() + 2 * frame["c2"].cat.codes.to_numpy()
    label = ((frame["x1"] + np.sin(codes) + np.nan_to_num(frame["x2"]) / 3) > 0.3).astype(int)
    return xgb.train({"objective": "binary:logistic", "max_depth": 5, "nthread": 1,
                      "max_cat_to_onehot": 1, "seed": seed},
                     xgb.DMatrix(frame, label, enable_categorical=True), 40)


VOCAB1 = ("1", "2", "2.5", "True", "a", "b")
VOCAB2 = ("x", "y", "z")
SPEC = FeatureSpec(NAMES, KINDS, {"c1": VOCAB1, "c2": VOCAB2})
BOOSTER = _train(VOCAB1, VOCAB2, 0)
# A model that stores its categories in another order than the spec's vocabulary (a spec
# that grew under `grown_from` while the model kept its own): the lean block must hold the
# model's codes, as XGBoost's re-coding of the pandas frame does.
SHUFFLED = _train(("b", "True", "2.5", "a", "2", "1", "unseen-by-spec"), ("z", "x", "y"), 1)


def _model(booster) -> LoadedModel:
    return LoadedModel(name="m", version="1", task="classification", spec=SPEC, booster=booster)


def old_path(model: LoadedModel, frame: pd.DataFrame, allow_all_missing_rows: bool):
    """Today's pandas path (serve/versions/ before the lean path), inlined."""
    if not allow_all_missing_rows:
        refuse_empty_rows(frame, model.spec.names)
    try:
        with np.errstate(over="ignore"):
            shaped = model.spec.frame(frame)
    except InvalidInput:
        raise
    except Exception as exc:
        raise InvalidInput(f"the features cannot be read: {type(exc).__name__}: {exc}") from exc
    for name, kind in zip(model.spec.names, model.spec.kinds, strict=True):
        if kind == "numeric" and np.isinf(shaped[name].to_numpy()).any():
            raise InvalidInput(f"feature {name!r} must be a finite number or null (missing), "
                               "but got an infinite or out-of-range value")
    return np.asarray(model.booster.inplace_predict(shaped), dtype=np.float64)


def outcome(fn):
    try:
        return "ok", fn()
    except InvalidInput as exc:
        return "invalid", str(exc)


# -- random bodies --------------------------------------------------------------------------

floats = st.floats(-1e30, 1e30, allow_nan=False)  # beyond float32 comes from `number`
ints = st.one_of(st.integers(-(10**6), 10**6), st.integers(-(2**70), 2**70))
categories = st.one_of(
    st.sampled_from(VOCAB1 + VOCAB2), st.text(max_size=3), st.none(), st.just(float("nan")),
    st.integers(-3, 3), st.sampled_from([2.5, 1.0, 2.0, -0.0]), st.booleans())


@st.composite
def number(draw, strict: bool):
    """Mostly a valid number or null; now and then NaN, a number beyond float32, or (not
    ``strict``) a value the pandas path refuses where a number goes."""
    roll = draw(st.integers(0, 79))
    if roll == 0:
        return draw(st.sampled_from([1e39, -1e39, 3.4e38, float("nan"), 2**128]))
    if roll == 1 and not strict:
        return draw(st.sampled_from(["1.5", "", True, False, 10**400]))
    return draw(st.one_of(floats, ints, st.none()))


@st.composite
def row_values(draw, strict: bool):
    return {"x1": draw(number(strict)), "c1": draw(categories), "x2": draw(number(strict)),
            "c2": draw(categories)}


@st.composite
def bodies(draw, strict: bool = True):
    n = draw(st.sampled_from([1, 1, 1, 2, 3, 5]))  # mostly single rows, as served
    rows = [draw(row_values(strict)) for _ in range(n)]
    layout = draw(st.sampled_from(["dataframe_split", "dataframe_records", "instances",
                                   "inputs-records", "inputs-columns"]))
    names = list(NAMES)
    if draw(st.booleans()):
        names = [*draw(st.permutations(names)), "extra"]  # order and extra columns vary
        for row in rows:
            row["extra"] = draw(st.one_of(st.none(), st.text(max_size=2)))
    if draw(st.integers(0, 29)) == 0:
        names.remove(draw(st.sampled_from(list(NAMES))))  # a missing column, now and then
    if layout == "dataframe_split":
        return {"dataframe_split": {"columns": names,
                                    "data": [[row[c] for c in names] for row in rows]}}
    if layout == "inputs-columns":
        return {"inputs": {c: [row[c] for row in rows] for c in names}}
    records = []
    for row in rows:
        # a record may leave a feature out (missing, as null)
        kept = [c for c in names if draw(st.integers(0, 19)) != 0]
        if strict and not kept:
            kept = names[:1]  # a body of empty records holds no rows: refused, not valid
        records.append({c: row[c] for c in kept})
    key = {"dataframe_records": "dataframe_records", "instances": "instances",
           "inputs-records": "inputs"}[layout]
    return {key: records}


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies(strict=False), allow=st.booleans(),
       booster=st.sampled_from(["same", "shuffled"]))
def test_the_lean_path_answers_every_body_as_the_pandas_path(body, allow, booster):
    model = _model(BOOSTER if booster == "same" else SHUFFLED)
    scorer = Scorer(model, allow_all_missing_rows=allow)
    assert scorer.encoder is not None
    old = outcome(lambda: old_path(model, parse_invocation(body), allow))
    new = outcome(lambda: scorer.score(parse_rows(body)))
    lean = outcome(lambda: scorer.encoder.encode(parse_rows(body),
                                                 allow_all_missing_rows=allow) is not None)
    event(f"{old[0]}, {'lean' if lean[1] is True else 'pandas'} path")
    assert old[0] == new[0]
    if old[0] == "ok":
        assert old[1].tobytes() == new[1].tobytes()  # bit for bit
    else:
        assert old[1] == new[1]  # the same refusal, word for word


@settings(max_examples=500, deadline=None)
@given(body=bodies(strict=True))
def test_most_valid_bodies_take_the_lean_path(body):
    """Not a correctness property: the lean path must really be taken, or it is no use. A
    valid body with every column falls back only for the ambiguous records cases."""
    rows = parse_rows(body)
    encoder = LeanEncoder.for_model(_model(BOOSTER))
    block = encoder.encode(rows, allow_all_missing_rows=True)
    if all(rows.column(n) is not None for n in NAMES) and not rows.infers_dtypes:
        finite = all(v is None or v != v or _finite32(v)
                     for n in ("x1", "x2") for v in rows.column(n))
        assert (block is not None) == finite


def _finite32(value) -> bool:
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.float32(float(value))))


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(row_values(strict=True), min_size=1, max_size=4),
       matrix=st.booleans())
def test_the_oip_body_takes_the_same_path(rows, matrix):
    model = _model(BOOSTER)
    scorer = Scorer(model, allow_all_missing_rows=True)
    if matrix:
        data = [[row[c] for c in NAMES] for row in rows]
        kind = "BYTES" if any(isinstance(v, str) for r in data for v in r) else "FP64"
        inputs = [{"name": "m", "shape": [len(rows), len(NAMES)], "datatype": kind,
                   "data": data}]
    else:
        inputs = [{"name": c, "shape": [len(rows)], "datatype": "FP64" if k == "numeric"
                   else "BYTES", "data": [row[c] for row in rows]}
                  for c, k in zip(NAMES, KINDS, strict=True)]
    try:
        parsed = parse_infer({"inputs": inputs}, NAMES, max_rows=100)
    except InvalidInput:
        return  # a datatype the values do not fit: refused before either path
    old = outcome(lambda: old_path(model, parsed.parsed.frame(), True))
    new = outcome(lambda: scorer.score(parsed.parsed))
    assert old[0] == new[0]
    if old[0] == "ok":
        assert old[1].tobytes() == new[1].tobytes()


def test_the_block_holds_the_models_codes_not_the_vocabularys_positions():
    """XGBoost 3 re-codes a pandas categorical by name; a numpy block is read as codes. With
    the model's categories in another order than the spec's, the positions differ."""
    encoder = LeanEncoder.for_model(_model(SHUFFLED))
    block = encoder.encode(parse_rows({"dataframe_records": [
        {"x1": 0.0, "c1": "b", "x2": None, "c2": "x"}]}))
    assert block[0, 1] == 0.0 and block[0, 3] == 1.0  # "b" is the model's 0th, "x" its 1st
    assert SPEC.frame(pd.DataFrame({"c1": ["b"], "c2": ["x"], "x1": [0.0], "x2": [0.0]},
                                   dtype=object))["c1"].cat.codes[0] == 5  # the spec's 5th


def test_a_model_without_stored_categories_reads_the_vocabularys_positions():
    """A booster trained on codes stores no categories: XGBoost reads a pandas categorical's
    codes as they are, and so must the block."""
    rng = np.random.default_rng(3)
    x = np.c_[rng.normal(size=500), rng.integers(0, 6, 500), rng.normal(size=500),
              rng.integers(0, 3, 500)].astype(np.float32)
    dtrain = xgb.DMatrix(x, (x[:, 0] + (x[:, 1] == 2)) > 0.5, feature_names=list(NAMES),
                         feature_types=["float", "c", "float", "c"], enable_categorical=True)
    booster = xgb.train({"objective": "binary:logistic", "max_cat_to_onehot": 1}, dtrain, 10)
    assert booster.get_categories(export_to_arrow=True).empty()
    model = _model(booster)
    body = {"dataframe_split": {"columns": list(NAMES), "data": [
        [0.1, v1, -1.0, v2] for v1 in VOCAB1 for v2 in VOCAB2]}}
    scorer = Scorer(model)
    assert scorer.encoder is not None
    assert scorer.score(parse_rows(body)).tobytes() == old_path(
        model, parse_invocation(body), False).tobytes()


def test_the_lean_path_stays_off_where_it_cannot_be_exact():
    class Stand:  # no feature names: the column order cannot be checked
        def inplace_predict(self, frame):
            return np.zeros(len(frame))

    assert LeanEncoder.for_model(_model(Stand())) is None
    # a spec category the model does not store: the pandas path fails on every request
    grown = FeatureSpec(NAMES, KINDS, {"c1": (*VOCAB1, "new"), "c2": VOCAB2})
    model = LoadedModel(name="m", version="1", task="classification", spec=grown,
                        booster=BOOSTER)
    assert LeanEncoder.for_model(model) is None
    renamed = FeatureSpec(("x1", "c1", "c2", "x2"), ("numeric", "categorical",
                                                      "categorical", "numeric"),
                          {"c1": VOCAB1, "c2": VOCAB2})
    assert LeanEncoder.for_model(LoadedModel(name="m", version="1", task="classification",
                                             spec=renamed, booster=BOOSTER)) is None


@pytest.mark.parametrize("column", [[1, None], [1, 2.5], [2**63, -1], [1, "a"]])
def test_records_whose_ints_pandas_may_retype_take_the_pandas_path(column):
    """pandas infers a records column's dtype across rows: 1 beside a null reads as 1.0, a
    different category. The lean path leaves those bodies to pandas, and answers alike."""
    body = {"dataframe_records": [{"x1": 0.5, "c1": v, "x2": 1.0, "c2": "x"} for v in column]}
    model = _model(BOOSTER)
    scorer = Scorer(model)
    assert scorer.encoder.encode(parse_rows(body)) is None or column == [1, "a"]
    assert scorer.score(parse_rows(body)).tobytes() == old_path(
        model, parse_invocation(body), False).tobytes()


def _logged_features(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The feature columns the log stored before it read parsed rows: one concat of the
    requests' frames, then one conversion per feature."""
    frame = pd.concat(frames, ignore_index=True)
    out = {}
    for name, kind in zip(NAMES, KINDS, strict=True):
        raw = frame[name] if name in frame else pd.Series([None] * len(frame), dtype=object)
        out[name] = (pd.to_numeric(raw, errors="coerce").astype("float64") if kind == "numeric"
                     else raw.astype("string"))
    return pa.table({name: pa.array(v, pa.float64() if kind == "numeric" else pa.string(),
                                    from_pandas=True)
                     for (name, v), kind in zip(out.items(), KINDS, strict=True)}).to_pandas()


@settings(max_examples=200, deadline=None)
@given(batch=st.lists(bodies(strict=True), min_size=1, max_size=4))
def test_the_inference_log_keeps_what_it_kept(batch):
    """The log gets the parsed rows (no frame); its writer reads each feature from them as the
    frame the pandas path built holds it, so the stored table is the one it stored before,
    value for value, for any mix of body formats flushed together."""
    from serve.inference_log.writer import _prediction_table, _PredictionEntry

    parsed = []
    for body in batch:
        try:
            parsed.append((parse_rows(body), parse_invocation(body)))
        except InvalidInput:
            continue
    if not parsed:
        return
    table = _prediction_table([
        _PredictionEntry(ts_ms=0, request_id=f"r{i}", model_version="1", spec=SPEC,
                         frame=rows, predictions=np.zeros(len(rows)))
        for i, (rows, _) in enumerate(parsed)]).to_pandas()
    # pandas' comparison: NaN (a JSON NaN, or the null latency) equals NaN
    pd.testing.assert_frame_equal(table[list(NAMES)],
                                  _logged_features([frame for _, frame in parsed]),
                                  check_exact=True)


def test_a_batch_mixes_lean_and_pandas_requests_and_answers_each_as_alone():
    """With batching on, lean blocks are predicted together, frames together; each request
    gets what it gets alone, and a bad one its own refusal."""
    from serve.versions import Limits, VersionCounters, VersionRunner

    runner = VersionRunner(_model(SHUFFLED), Limits(), VersionCounters())
    lean = [{"dataframe_records": [{"x1": 0.1 * i, "c1": "b", "x2": i, "c2": "y"}]}
            for i in range(3)]
    pandas_path = {"dataframe_records": [{"x1": 0.5, "c1": 1, "x2": 1.0, "c2": "x"},
                                         {"x1": 0.5, "c1": None, "x2": 1.0, "c2": "z"}]}
    big = {"dataframe_split": {"columns": list(NAMES),
                               "data": [[0.2, "a", 3.0, "x"]] * 1001}}  # over LEAN_MAX_ROWS
    bad = {"dataframe_records": [{"x1": "high", "c1": "a", "x2": 1.0, "c2": "x"}]}
    bodies_ = [*lean, pandas_path, big, bad, big]
    items = [(parse_rows(b), 0.0) for b in bodies_]
    done = runner._score_many(items)
    for body, d in zip(bodies_[:5], done[:5], strict=True):
        assert d.exc is None
        assert d.predictions.tobytes() == old_path(
            runner.model, parse_invocation(body), False).tobytes()
    assert isinstance(done[5].exc, InvalidInput) and "must be numeric" in str(done[5].exc)
    assert done[6].predictions.tobytes() == done[4].predictions.tobytes()


def test_a_value_the_lean_path_cannot_read_goes_to_the_pandas_path():
    """An int past Python's digit limit for text (a JSON body cannot hold one; a caller in
    process can): the lean path's str() raises, and the pandas path gives its 400."""
    model = _model(BOOSTER)
    body = {"dataframe_records": [{"x1": 0.5, "c1": 10**5000, "x2": 1.0, "c2": "x"}]}
    old = outcome(lambda: old_path(model, parse_invocation(body), False))
    assert outcome(lambda: Scorer(model).score(parse_rows(body))) == old
