"""Model families and their search spaces as data: config -> `Family` -> trial params -> model.

Five families compete in one search:

- ``xgboost``: XGBoost from scratch over ``search.space``;
- ``xgboost_window``: XGBoost from scratch on a searched training window (the newest k
  partitions, rows weighted by a searched recency half-life), see `window_weights`;
- ``xgboost_warm_start``: the champion's booster, boosted on for a few more rounds on the
  training rows it has not seen (continual learning); valid when the champion reads this
  cycle's columns with the same codes (vocabularies may grow), see `warm_start_problem`;
- ``hist_gradient_boosting`` and ``linear``: scikit-learn estimators, see `build_sklearn`.

Everything here is pure or a thin constructor; Ray Tune is driven by `retrain.search`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from retrain.config import ParamRange, SearchConfig
from retrain.errors import InvalidValueError
from serve.features import FeatureSpec

#: our metric name -> (XGBoost eval_metric, convert XGBoost's value into ours)
XGB_METRICS: dict[str, tuple[str, Any]] = {
    "auc": ("auc", lambda v: v),
    "logloss": ("logloss", lambda v: v),
    "accuracy": ("error", lambda v: 1.0 - v),
    "rmse": ("rmse", lambda v: v),
    "mae": ("mae", lambda v: v),
}
OBJECTIVES = {"classification": "binary:logistic", "regression": "reg:squarederror"}

XGBOOST = "xgboost"
WINDOW = "xgboost_window"
WARM_START = "xgboost_warm_start"
HIST_GRADIENT_BOOSTING = "hist_gradient_boosting"
LINEAR = "linear"
#: family -> how its models are stored, logged and served
FLAVORS = {XGBOOST: "xgboost", WINDOW: "xgboost", WARM_START: "xgboost",
           HIST_GRADIENT_BOOSTING: "sklearn", LINEAR: "sklearn"}
#: a window trial's own parameters (`window_weights`), not XGBoost's
WINDOW_PARAMS = ("recent_partitions", "half_life")
#: the key of a trial's config that names its family
FAMILY_KEY = "family"


@dataclass(frozen=True)
class Family:
    """One candidate family as the search sees it."""

    name: str
    #: parameter -> `ParamRange` (searched) or a fixed value
    space: dict[str, Any]
    #: boosting rounds of one trial; scikit-learn families fit once and report once
    rounds: int

    @property
    def flavor(self) -> str:
        return FLAVORS[self.name]

    @property
    def warm_start(self) -> bool:
        return self.name == WARM_START

    @property
    def searched(self) -> bool:
        return any(isinstance(v, ParamRange) for v in self.space.values())


def families(search: SearchConfig) -> tuple[Family, ...]:
    """The enabled families, in a fixed order (the order trials are handed out in)."""
    f = search.families
    out = []
    if f.xgboost.enabled:
        out.append(Family(XGBOOST, dict(search.space), search.num_boost_round))
    if f.xgboost_window.enabled:
        out.append(Family(WINDOW, dict(f.xgboost_window.space), search.num_boost_round))
    if f.xgboost_warm_start.enabled:
        w = f.xgboost_warm_start
        out.append(Family(WARM_START, dict(w.space), w.num_boost_round))
    if f.hist_gradient_boosting.enabled:
        out.append(Family(HIST_GRADIENT_BOOSTING, dict(f.hist_gradient_boosting.space), 1))
    if f.linear.enabled:
        out.append(Family(LINEAR, dict(f.linear.space), 1))
    return tuple(out)


def _suggest(trial: Any, name: str, entry: ParamRange) -> Any:
    if entry.type == "categorical":
        return trial.suggest_categorical(name, list(entry.choices))
    if entry.type == "int":
        low, high = entry.bounds
        return trial.suggest_int(name, int(low), int(high), log=entry.log)
    return trial.suggest_float(name, *entry.bounds, log=entry.log)


def family_distributions(family: Family) -> dict[str, Any]:
    """The Optuna distributions of a family's searched parameters, named as `FamilySpace`
    names them: what `_suggest` asks for, for trials recorded without being suggested."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for name, entry in family.space.items():
        if not isinstance(entry, ParamRange):
            continue
        if entry.type == "categorical":
            out[f"{family.name}/{name}"] = CategoricalDistribution(list(entry.choices))
        elif entry.type == "int":
            low, high = entry.bounds
            out[f"{family.name}/{name}"] = IntDistribution(int(low), int(high), log=entry.log)
        else:
            out[f"{family.name}/{name}"] = FloatDistribution(*entry.bounds, log=entry.log)
    return out


#: the Optuna user attribute that records a trial's family
FAMILY_ATTR = "family"

#: each family's default configuration, the first trial of its search (see `default_params`):
#: values a careful person would start from (XGBoost's own defaults but for depth and step,
#: which match the common "depth 8, eta 0.1" baseline); parameters left out take the middle
#: of their range
DEFAULTS: dict[str, dict[str, Any]] = {
    XGBOOST: {"max_depth": 8, "eta": 0.1, "min_child_weight": 1.0, "subsample": 1.0,
              "colsample_bytree": 1.0, "lambda": 1.0, "alpha": 0.0, "gamma": 0.0},
    # the window family starts at the other end from plain XGBoost: every partition, but
    # each one's rows worth half the next one's
    WINDOW: {"recent_partitions": 1000, "half_life": 1.0, "max_depth": 8, "eta": 0.1,
             "min_child_weight": 1.0},
    WARM_START: {"eta": 0.05, "max_depth": 6, "subsample": 1.0, "lambda": 1.0,
                 "min_child_weight": 1.0, "colsample_bytree": 1.0},
    HIST_GRADIENT_BOOSTING: {"learning_rate": 0.1, "max_leaf_nodes": 31,
                             "min_samples_leaf": 20, "l2_regularization": 0.0},
    LINEAR: {"alpha": 1.0},
}


def default_params(family: Family) -> dict[str, Any]:
    """The family's default configuration as Optuna parameters (``<family>/<param>``) of its
    searched ranges: `DEFAULTS` clipped into each range (a categorical takes the default
    when it is a choice, else its first choice), the middle of a range without a default."""
    out: dict[str, Any] = {}
    wanted = DEFAULTS.get(family.name, {})
    for name, entry in family.space.items():
        if not isinstance(entry, ParamRange):
            continue
        key = f"{family.name}/{name}"
        if entry.type == "categorical":
            value = wanted.get(name)
            out[key] = value if value in entry.choices else entry.choices[0]
            continue
        low, high = entry.bounds
        if name in wanted:
            value = min(max(float(wanted[name]), low), high)
        else:
            value = math.sqrt(low * high) if entry.log else (low + high) / 2
        out[key] = round(value) if entry.type == "int" else value
    return out


@dataclass(frozen=True)
class FamilySpace:
    """An Optuna define-by-run space over several families.

    Each trial goes to the family with the fewest trials in the study so far (ties in the
    families' order: round robin in a fresh search), so every active family gets its share
    of the samples whatever TPE believes early on, also when a resumed search's study starts
    with the finished trials of an earlier run, in any mix. The family is kept as the
    trial's ``family`` user attribute. Parameters are named ``<family>/<param>``, so families
    never share an Optuna distribution (``eta`` may have different ranges in two families);
    Ray Tune turns the ``/`` into a nested config: ``{"family": f, f: {param: value}}``.
    """

    families: tuple[Family, ...]

    def __call__(self, trial: Any) -> dict[str, Any]:
        by_name = {f.name: f for f in self.families}
        # an enqueued trial (a family's default configuration) names its family already
        family = by_name.get(trial.user_attrs.get(FAMILY_ATTR))
        if family is None:
            counts = dict.fromkeys(by_name, 0)
            for other in trial.study.get_trials(deepcopy=False):
                name = other.user_attrs.get(FAMILY_ATTR)
                if name in counts and other.number != trial.number:
                    counts[name] += 1
            family = min(self.families, key=lambda f: counts[f.name])
            trial.set_user_attr(FAMILY_ATTR, family.name)
        fixed = {}
        for name, entry in family.space.items():
            key = f"{family.name}/{name}"
            if isinstance(entry, ParamRange):
                _suggest(trial, key, entry)
            else:
                fixed[key] = entry
        return {FAMILY_KEY: family.name, **fixed}


def trial_family(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A trial config's family and that family's parameters."""
    name = config.get(FAMILY_KEY, XGBOOST)
    return name, dict(config.get(name) or {})


def window_weights(params: dict[str, Any], ages: np.ndarray) -> np.ndarray:
    """Row weights of a window trial: 0 outside the newest ``recent_partitions`` partitions,
    ``0.5 ** (age / half_life)`` inside (``ages``: each row's partition age, 0 the newest)."""
    k = int(params.get("recent_partitions", 10**9))
    half_life = float(params.get("half_life", math.inf))
    weights = np.power(0.5, ages / half_life) if math.isfinite(half_life) \
        else np.ones(len(ages))
    return np.where(ages < k, weights, 0.0)


def partition_ages(partitions, n_rows: int) -> np.ndarray | None:
    """Each of ``n_rows`` time-ordered rows' partition age (0: the newest of ``partitions``);
    None when the partitions' row counts do not add up (rows cannot be told apart)."""
    sizes = [p.rows for p in partitions]
    if sum(sizes) != n_rows:
        return None
    # pieces of one partition (a holdout's head and tail) share its age
    order = list(dict.fromkeys(p.value for p in partitions))
    age = {value: len(order) - 1 - i for i, value in enumerate(order)}
    return np.repeat([age[p.value] for p in partitions], sizes).astype(np.float64)


def xgb_params(
    task: str, metric: str, params: dict[str, Any], *, nthread: int, device: str, seed: int
) -> dict[str, Any]:
    """Full XGBoost training parameters for one trial (a window trial's own parameters left
    out)."""
    params = {k: v for k, v in params.items() if k not in WINDOW_PARAMS}
    return {
        "objective": OBJECTIVES[task],
        "eval_metric": XGB_METRICS[metric][0],
        "tree_method": "hist",
        "device": device,
        "nthread": nthread,
        "seed": seed,
        **params,
    }


def warm_start_problem(
    champion_spec: FeatureSpec | None, champion_flavor: str | None, spec: FeatureSpec
) -> str | None:
    """Why the champion cannot be boosted on with this cycle's features, or None when it can.

    New trees are appended to the champion's, so both must read the same columns in the same
    order with the same category codes: a vocabulary may grow (new categories get new codes),
    but any other difference in the feature spec would make the old trees split on the wrong
    values.
    """
    if champion_spec is None:
        return "no champion yet"
    if champion_flavor != "xgboost":
        return f"the champion is a {champion_flavor} model; only an XGBoost champion can be " \
               "boosted on"
    if spec.extends(champion_spec):
        # a vocabulary that grew keeps the champion's codes (`FeatureSpec.grown_from`): its
        # trees read them as before, and the new trees learn the new categories
        return None
    old, new = champion_spec, spec
    if old.names != new.names:
        added = [n for n in new.names if n not in old.names]
        removed = [n for n in old.names if n not in new.names]
        what = (f"features added {added}" if added else "") + (
            f"{', ' if added else ''}features removed {removed}" if removed else "")
        return f"the features changed since the champion was trained: {what or 'reordered'}"
    kinds = [n for n, a, b in zip(new.names, old.kinds, new.kinds, strict=True) if a != b]
    if kinds:
        return f"feature kinds changed since the champion was trained: {kinds}"
    changed = [name for name in new.names
               if new.categories.get(name, ())[: len(old.categories.get(name, ()))]
               != old.categories.get(name, ())]
    return (f"category codes changed since the champion was trained (the champion's codes "
            f"would be wrong) for {changed}; vocabularies only grow when the split is loaded "
            "with the champion's spec as its base")


def build_sklearn(
    family: str, task: str, params: dict[str, Any], *, frame: pd.DataFrame, seed: int
):
    """An unfitted scikit-learn estimator for ``family`` that takes frames shaped by
    `FeatureSpec.frame` (numeric float columns, pandas categoricals) as they are."""
    classification = task == "classification"
    if family == HIST_GRADIENT_BOOSTING:
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        estimator = HistGradientBoostingClassifier if classification \
            else HistGradientBoostingRegressor
        # our validation split ranks trials; an inner random split would waste rows and seed
        # noise, so early stopping is off unless the space turns it on
        return estimator(**{"categorical_features": "from_dtype", "early_stopping": False,
                            "random_state": seed, **params})
    if family == LINEAR:
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.pipeline import Pipeline, make_pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        params = dict(params)
        alpha = float(params.pop("alpha", 1.0))
        categorical = [c for c in frame.columns
                       if isinstance(frame[c].dtype, pd.CategoricalDtype)]
        numeric = [c for c in frame.columns if c not in categorical]
        prepare = ColumnTransformer([
            ("numeric", make_pipeline(SimpleImputer(strategy="median",
                                                    keep_empty_features=True),
                                      StandardScaler()), numeric),
            # values outside the spec's vocabulary arrive as missing: a category of its own
            ("categorical", OneHotEncoder(handle_unknown="ignore"), categorical),
        ])
        model = (LogisticRegression(**{"C": 1.0 / alpha, "max_iter": 1000, **params})
                 if classification else Ridge(**{"alpha": alpha, **params}))
        return Pipeline([("prepare", prepare), ("model", model)])
    raise InvalidValueError(f"{family!r} is not a scikit-learn family; known: "
                            f"{sorted(k for k, v in FLAVORS.items() if v == 'sklearn')}")


def check_sklearn_space(family: Family, task: str) -> str | None:
    """A problem with a scikit-learn family's parameter names, or None. Checked before the
    search starts, so a typo fails once, at once, rather than in every trial."""
    params = {name: entry.choices[0] if isinstance(entry, ParamRange) and entry.choices
              else entry.low if isinstance(entry, ParamRange) else entry
              for name, entry in family.space.items()}
    if family.name == LINEAR:
        params.pop("alpha", None)  # translated by build_sklearn
    estimator = build_sklearn(family.name, task, {}, frame=pd.DataFrame({"x": [0.0]}), seed=0)
    target = estimator.named_steps["model"] if family.name == LINEAR else estimator
    try:
        target.set_params(**params)
    except ValueError as exc:
        return str(exc).splitlines()[0]
    return None

