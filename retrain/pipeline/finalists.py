"""The search's finalists loaded (refit on every training row where configured) and the champion
beside them, with their footprints measured in one run.
"""

from __future__ import annotations

from retrain.config import Config
from retrain.data import Split
from retrain.errors import DataError
from retrain.evaluate import Finalist, measure_footprints
from retrain.refit import refit_finalists, refit_problem
from retrain.search import SearchResult, WarmStart, load_model
from serve.loader import LoadedModel
from serve.schemas import InvalidInput
from serve.scoring import Scorer, request_body


def _footprints(split: Split, models: dict[str, LoadedModel]):
    """Time every finalist and the champion together, so their latency ratios are fair, on
    the path a serving replica takes (`serve.scoring.Scorer`): a JSON ``/invocations`` body
    of the holdout's rows, decoded, read and predicted as the replica does, so a measured
    single-row latency is what a caller of that version waits for inside the replica."""
    # every model's features (extra columns are ignored, as a replica ignores them)
    names = tuple(dict.fromkeys(n for m in models.values() for n in m.spec.names))
    return measure_footprints(
        {name: (Scorer(m, allow_all_missing_rows=True).score_body, m.size_bytes())
         for name, m in models.items()},
        split.holdout_raw,
        prepare=lambda rows: request_body(rows, names),
    )


def _champion_finalist(champion: LoadedModel, version: str, split: Split):
    try:
        frame = champion.spec.frame(split.holdout_raw)
    except InvalidInput as exc:
        raise DataError(
            f"the champion (version {version}) cannot score the new holdout: {exc}. The "
            "features changed since it was trained; compare on matching features or retire it"
        ) from exc
    return champion, Finalist(name=f"v{version}", predictions=champion.predict(frame),
                              version=version)


def _finalists(config: Config, search: SearchResult, split: Split, warm: WarmStart | None,
               say=None):
    """The top trials by validation score, refit on every training row (`retrain.refit`)
    unless that is off or impossible, with their holdout predictions. Also says which rows
    the finalists' models trained on (for the lineage and the report)."""
    trials = search.finalists(config.evaluation.finalists)
    problem = refit_problem(config, split)
    refitted = {} if problem else refit_finalists(config, trials, split, warm)
    boosters, models, finalists = {}, {}, []
    for trial in trials:
        again = refitted.get(trial.trial_id)
        # an XGBoost booster or a scikit-learn estimator
        booster = again.model if again is not None else load_model(trial)
        # a warm-started model reads categories as its champion did (XGBoost keeps the
        # champion's categories in the model); new ones reach it as missing
        spec = warm.spec if trial.family == "xgboost_warm_start" and warm is not None \
            and warm.spec is not None else split.spec
        model = LoadedModel(name=config.model_name, version=f"trial-{trial.trial_id}",
                            task=config.task.type, spec=spec, booster=booster,
                            flavor=trial.flavor)
        boosters[trial.trial_id] = model
        models[f"trial-{trial.trial_id}"] = model
        finalists.append(Finalist(
            name=f"trial-{trial.trial_id}",
            # the split's holdout frame is already typed by its spec; only a warm start's
            # champion spec frames it again
            predictions=model.predict(split.x_holdout if spec is split.spec
                                      else spec.frame(split.holdout_raw)),
            trial_id=trial.trial_id,
            valid_score=trial.score,
            trained_rows=again.rows if again is not None else None,
        ))
    if problem:
        refit = f"not refit: {problem}"
    else:
        rows = split.train_rows + split.valid_rows
        refit = (f"refit on all {rows} training rows (validation rows included; a warm start "
                 "on the rows its champion had not seen)")
    if say is not None:
        say(f"  finalists {refit}")
    return boosters, models, finalists, refit
