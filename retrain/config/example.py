"""The commented example config `retrain init` writes."""

from __future__ import annotations

EXAMPLE_YAML = """\
# retrain project configuration. Relative paths are resolved against this file's folder.
project:
  name: {name}                 # names the MLflow experiment and registered model by default
  workdir: .retrain            # MLflow store (SQLite + artifacts) and search results live here

data:
  path: data                   # hive-partitioned Parquet: data/<partition_column>=<value>/*.parquet
  partition_column: month      # partitions sort by this value; the newest form the holdout
  target: late                 # the column to predict
  features: []                 # empty: every column except target, partition column and exclude
  exclude: []
  categorical: []              # string columns are categorical anyway
  holdout_partitions: 1        # newest N partitions: champion and challenger are compared there
  holdout_share: 0.5           # ... on their newest half; the older half trains
  validation_fraction: 0.2     # newest share of the training rows, used to rank trials

task:
  type: classification         # classification | regression
  metric: auc                  # classification: auc | logloss | accuracy; regression: rmse | mae

search:
  num_samples: 8               # trials per cycle
  max_concurrent: 2            # trials at once (bounded by the cluster's CPUs/GPUs too)
  num_boost_round: 100
  report_every: 10             # rounds between reports; ASHA decides at reports
  early_stopping: true         # ASHA stops weak trials early
  seed: 0
  max_failures: 1              # retries of a crashed trial (a node dying, say)
  data_parallel:               # XGBoost trials on Ray Train workers over Ray Data shards
    enabled: auto              # auto: from min_rows training rows on; or true / false
    min_rows: 20000000
    num_workers: 2
    cpus_per_worker: 1         # leave CPUs free for Ray Data's reads (cpus_per_read_task)
  space:                       # a range is searched, a plain value is fixed
    max_depth: {{type: int, low: 3, high: 10}}
    eta: {{type: float, low: 0.02, high: 0.3, log: true}}
    min_child_weight: {{type: float, low: 1, high: 20, log: true}}
    subsample: {{type: float, low: 0.6, high: 1.0}}
    colsample_bytree: {{type: float, low: 0.6, high: 1.0}}
    lambda: {{type: float, low: 0.1, high: 10, log: true}}
  families:                    # candidates searched together; num_samples is shared in turn
    xgboost:                   # XGBoost from scratch, over search.space above
      enabled: true
    xgboost_window:            # XGBoost on the newest partitions, weighted by recency: the
      enabled: true            # training window as a searched choice (after a drift, old
      space:                   # rows mislead; on stable data they help)
        recent_partitions: {{type: int, low: 1, high: 12}}
        half_life: {{type: float, low: 0.5, high: 24, log: true}}
        max_depth: {{type: int, low: 4, high: 10}}
        eta: {{type: float, low: 0.03, high: 0.3, log: true}}
    xgboost_warm_start:        # continue the champion's booster on the new data (needs a
      enabled: true            # champion with the same features; skipped, with the reason, if not)
      num_boost_round: 20      # rounds added to the champion's trees
      rows: new                # new: only rows the champion never trained on; or all
      space:
        eta: {{type: float, low: 0.01, high: 0.1, log: true}}
        max_depth: {{type: int, low: 3, high: 8}}
    hist_gradient_boosting:    # scikit-learn HistGradientBoosting (categoricals natively)
      enabled: false
      space:
        learning_rate: {{type: float, low: 0.02, high: 0.3, log: true}}
        max_leaf_nodes: {{type: int, low: 15, high: 63}}
        max_iter: 100
    linear:                    # impute, scale, one-hot + LogisticRegression / Ridge
      enabled: false
      space:
        alpha: {{type: float, low: 0.0001, high: 10, log: true}}  # regularisation strength

resources:
  cpus_per_trial: 1            # XGBoost threads per trial
  gpus_per_trial: 0            # > 0 trains on the GPU (device=cuda); fractions share one GPU
  placement_timeout_s: 300     # trials waiting for resources this long, none running: fail

evaluation:
  min_score: 0.6               # value: the holdout score every promoted model must reach
  min_improvement: 0.0         # change: lower bound of (challenger - champion) must exceed it
  mode: superiority            # or non_inferiority (with non_inferiority_margin)
  confidence: 0.95             # paired interval: DeLong for auc, bucketed bootstrap otherwise
  finalists: 3                 # top trials scored on the holdout (Bonferroni-adjusted)
  slices: []                   # e.g. [{{column: origin, min_rows: 200, tolerance: 0.01}}]
  guardrails:                  # challenger / champion, measured in the same run
    max_latency_ratio: 2.0
    max_batch_latency_ratio: 2.0
    max_size_ratio: 10.0

admission:                     # new partitions vs the champion's training data
  enabled: true
  on_drift: warn               # or quarantine; drift is information, not a data defect
  on_out_of_range: warn        # or quarantine; schema, row-count, infinite and all-missing
                               # values always quarantine (`retrain readmit` releases one)
  max_drifted_share: 0.3       # the partition drifted when more features than this drifted

mlflow:
  tracking_uri:                # empty: sqlite file in the workdir; or http://mlflow:5000, ...
  experiment:                  # empty: project name
  model_name:                  # empty: project name

serving:
  host: 127.0.0.1
  port: 8000
  app_name: retrain
  num_replicas: 1
  poll_interval_s: 2           # replicas pick up a new champion within this time
  admin_token_env: RETRAIN_ADMIN_TOKEN  # bearer token of POST /feedback and /admin/*

inference_log:                 # every prediction, to Parquet, for the monitor
  enabled: true
  path:                        # empty: <workdir>/inference; replicas and `retrain watch` share it

monitor:                       # live inputs vs the champion's training data
  window_rows: 5000
  min_rows: 500
  max_drifted_share: 0.3

triggers:                      # when `retrain watch` starts a cycle
  schedule:
    interval_s:                # e.g. 604800 (weekly); or cron: "0 3 * * 1" (UTC)
  performance:
    relative_tolerance: 0.02   # live metric 2 % worse than the champion's holdout metric
    min_samples: 200           # labelled predictions it must rest on
  drift:
    enabled: true
    defer_to_labels: true      # with enough labels, the label-based triggers judge instead
    immediate_share: 0.5       # this share of features drifted: fire at the first check
  opportunity:                 # the champion continued on new labels beats it, with evidence
    enabled: true
    min_rows: 1000
  debounce: 1                  # consecutive checks a borderline condition must hold
  immediate_factor: 2.0        # a drop of 2x the tolerance fires at the first check
  cooldown_s: 3600             # quiet time after a cycle starts
  max_cycles: 6                # at most this many cycles ...
  period_s: 86400              # ... per day
  check_interval_s: 60

rollout:                       # how a promoted version reaches live traffic on Ray Serve
  enabled: false               # true: champion moves only after smoke, shadow and canaries
  sticky_key:                  # e.g. x-user-id: header/body field; one caller, one version
  smoke:
    requests: 50               # a sample batch to champion and challenger: errors, latency
  shadow:
    duration_s: 300            # live requests mirrored to the challenger, compared, not served
    min_requests: 500
  canary:
    steps: [5, 25, 50, 100]    # percent of live traffic; or {{percent: 5, bake_s: 600}}
    bake_s: 300                # each step lasts at least this long ...
    min_requests: 500          # ... and until the challenger answered this many requests
  gates:                       # against the champion on the same traffic; a failure rolls back
    max_error_rate: 0.01       # challenger's error rate above the champion's
    max_latency_ratio: 1.5     # p99: challenger <= 1.5 x champion + latency_slack_ms
    latency_slack_ms: 5
    max_prediction_psi: 0.2    # prediction shift (with KS significant at shift_alpha)
    live_metric_tolerance: 0.02  # once min_labelled labels arrived per version
    min_labelled: 200
  drain_s: 30                  # the old version retires this long after the last step
  driver_nice: 19              # `retrain rollout start` lowers its CPU priority by this much
                               # (Ray's workers run at 15: 16-19 puts the driver below them)

ray:
  address:                     # empty: RAY_ADDRESS, a running local cluster, or a new one
  num_cpus:                    # CPUs for a new local runtime
"""


def example_yaml(name: str = "my-project") -> str:
    """The commented example written by `retrain init`."""
    return EXAMPLE_YAML.format(name=name)
