"""Model families and search spaces as data: config space -> Tune space -> XGBoost params."""

from __future__ import annotations

from typing import Any

from retrain.config import ParamRange

#: our metric name -> (XGBoost eval_metric, convert XGBoost's value into ours)
XGB_METRICS: dict[str, tuple[str, Any]] = {
    "auc": ("auc", lambda v: v),
    "logloss": ("logloss", lambda v: v),
    "accuracy": ("error", lambda v: 1.0 - v),
    "rmse": ("rmse", lambda v: v),
    "mae": ("mae", lambda v: v),
}
OBJECTIVES = {"classification": "binary:logistic", "regression": "reg:squarederror"}


def tune_space(space: dict[str, Any]) -> dict[str, Any]:
    """Ray Tune sampling domains for the searched entries; fixed values pass through."""
    from ray import tune

    out: dict[str, Any] = {}
    for name, entry in space.items():
        if not isinstance(entry, ParamRange):
            out[name] = entry
        elif entry.type == "categorical":
            out[name] = tune.choice(list(entry.choices))
        elif entry.type == "int":
            low, high = int(entry.low), int(entry.high) + 1  # Tune's upper bound is exclusive
            out[name] = tune.lograndint(low, high) if entry.log else tune.randint(low, high)
        else:
            low, high = float(entry.low), float(entry.high)
            out[name] = tune.loguniform(low, high) if entry.log else tune.uniform(low, high)
    return out


def xgb_params(
    task: str, metric: str, params: dict[str, Any], *, nthread: int, device: str, seed: int
) -> dict[str, Any]:
    """Full XGBoost training parameters for one trial."""
    return {
        "objective": OBJECTIVES[task],
        "eval_metric": XGB_METRICS[metric][0],
        "tree_method": "hist",
        "device": device,
        "nthread": nthread,
        "seed": seed,
        **params,
    }
