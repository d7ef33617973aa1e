"""The cycle report: one self-contained HTML page a person can read (plots inlined as PNG).

It shows the decision and every check behind it, the metric comparison with its interval,
per-slice changes, the search's best-so-far curve and per-trial learning curves, and the data
lineage. Rendering is pure (values in, HTML out); matplotlib runs with the Agg backend.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping

from retrain.decide import Decision
from retrain.evaluate import Comparison
from retrain.search import SearchResult
from retrain.search.results import by_score

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0} td,th{padding:.25em .7em;border:1px solid #ddd;
text-align:left;font-size:.9em} .pass{color:#1a7f37} .fail{color:#cf222e}
.verdict{font-size:1.3em;font-weight:bold;padding:.3em .7em;border-radius:4px;display:inline-block}
.promote{background:#dafbe1} .keep{background:#fff8c5} .reject{background:#ffebe9}
img{max-width:100%}
"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="plot" src="data:image/png;base64,{encoded}">'


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _difference_plot(c: Comparison) -> str:
    rows = [c.difference, *c.secondary.values()] if c.difference else []
    rows = [d for d in rows if d is not None and not math.isnan(d.low)]
    if not rows:
        return "<p>No champion to compare with: the first model is judged on thresholds.</p>"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.5 * len(rows)))
    for i, d in enumerate(rows):
        ax.errorbar(d.estimate, i, xerr=[[d.estimate - d.low], [d.high - d.estimate]],
                    fmt="o", capsize=4, color="#0969da")
    ax.axvline(0, color="#888", lw=1)
    ax.set_yticks(range(len(rows)), [f"{d.metric} ({d.method})" for d in rows])
    ax.set_xlabel("challenger - champion (> 0: challenger better)")
    ax.set_title(f"paired intervals, {c.confidence:.1%} for the primary metric")
    return _png(fig)


def _slice_plot(c: Comparison, tolerances: Mapping[str, float]) -> str:
    if not c.slices:
        return "<p>No slices configured (evaluation.slices) or no champion.</p>"
    plt = _plt()
    shown = sorted(c.slices, key=lambda s: s.delta)[:30]
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.3 * len(shown)))
    colors = ["#cf222e" if s.delta < -tolerances.get(s.column, 0) else "#1a7f37" for s in shown]
    ax.barh(range(len(shown)), [s.delta for s in shown], color=colors)
    ax.set_yticks(range(len(shown)), [f"{s.column}={s.group} ({s.rows})" for s in shown])
    ax.axvline(0, color="#888", lw=1)
    for column, tolerance in tolerances.items():
        ax.axvline(-tolerance, color="#cf222e", lw=1, ls="--", label=f"-tolerance {column}")
    ax.set_xlabel(f"{c.metric} change per group (> 0: challenger better)")
    return _png(fig)


def _search_plot(search: SearchResult) -> str:
    scored = [t for t in search.trials if t.score is not None]
    if not scored:
        return "<p>No trial reported a score.</p>"
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    pick = max if search.greater_is_better else min
    best: float | None = None
    curve: list[float] = []
    for trial in scored:
        score = by_score(trial)
        best = score if best is None else pick(best, score)
        curve.append(best)
    left.plot(range(1, len(scored) + 1), [t.score for t in scored], "o", color="#8c959f",
              label="trial (final or last report)")
    left.step(range(1, len(scored) + 1), curve, where="post", color="#0969da",
              label="best so far")
    left.set_xlabel("trial")
    left.set_ylabel(f"validation {search.metric}")
    left.legend(fontsize=8)
    for trial in search.trials:
        if trial.history:
            right.plot([h["round"] for h in trial.history], [h["score"] for h in trial.history],
                       color="#0969da" if trial.status == "completed" else "#d0d7de")
    right.set_xlabel("boosting round")
    right.set_title("per-trial curves (grey: stopped early)", fontsize=9)
    return _png(fig)


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _choice(trial) -> str:
    """What a finalist chose beyond its hyperparameters: its training window and rounds."""
    if trial is None:
        return "-"
    parts = [f"{trial.rounds} rounds"] if trial.flavor == "xgboost" else []
    if "recent_partitions" in trial.params:
        parts.append(f"newest {trial.params['recent_partitions']} partitions, half-life "
                     f"{float(trial.params.get('half_life', 0)):.1f}")
    return ", ".join(parts) or "-"


def render_report(
    *, title: str, decision: Decision, comparison: Comparison, search: SearchResult,
    lineage: Mapping[str, str], tolerances: Mapping[str, float] | None = None,
    admission: Mapping[str, str] | None = None,
) -> str:
    c, e = comparison, html.escape
    checks = _table(
        [[f'<span class="{"pass" if x.passed else "fail"}">{"pass" if x.passed else "FAIL"}'
          "</span>", e(x.name), e(x.detail)] for x in decision.checks],
        ["", "check", "detail"],
    )
    models = [c.champion] if c.champion else []
    models += list(c.finalists)
    metric_names = list(c.challenger.metrics)
    by_id = {t.trial_id: t for t in search.trials}
    comparison_rows = []
    for m in models:
        role = ("champion" if m is c.champion
                else "challenger" if m.name == c.challenger.name else "finalist")
        fp = m.footprint
        trial = by_id.get(m.trial_id or "")
        comparison_rows.append([
            e(m.name), role, e(trial.family if trial else "-"),
            e(_choice(trial)), "-" if m.trained_rows is None else f"{m.trained_rows:,}",
            *(f"{m.metrics[k]:.4f}" for k in metric_names),
            "-" if fp is None else f"{fp.single_row_ms:.2f}",
            "-" if fp is None else f"{fp.size_bytes / 1e3:.0f}",
        ])
    comparison_table = _table(comparison_rows, ["model", "role", "family", "choices",
                                                "trained rows", *metric_names,
                                                "1-row ms", "size kB"])
    lineage_table = _table([[e(k), e(str(v))] for k, v in lineage.items()], ["lineage", ""])
    admission_html = (
        _table([[e(k), e(str(v))] for k, v in admission.items()], ["admission", ""])
        if admission else "<p>No admission report for this cycle.</p>"
    )
    trials = _table(
        [[e(t.trial_id), t.status, "-" if t.score is None else f"{t.score:.4f}", str(t.rounds),
          f"{t.train_seconds:.1f}", e(t.error or "")] for t in search.trials],
        ["trial", "status", f"valid {search.metric}", "rounds", "seconds", "error"],
    )
    verdict = decision.verdict.value
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{e(title)}</h1>
<p><span class="verdict {verdict}">{verdict.upper()}</span></p>
<ul>{"".join(f"<li>{e(r)}</li>" for r in decision.reasons)}</ul>
<h2>Checks</h2>{checks}
<h2>Holdout comparison ({c.holdout_rows:,} rows, primary metric {e(c.metric)})</h2>
{comparison_table}{_difference_plot(c)}
<h2>Slices</h2>{_slice_plot(c, tolerances or {})}
<h2>Search</h2>
<p>{len(search.trials)} trials: {search.count("completed")} completed,
{search.count("stopped")} stopped early, {search.count("failed")} failed;
{search.wall_seconds:.1f}s wall.</p>{_search_plot(search)}{trials}
<h2>Data</h2>{admission_html}{lineage_table}
</body></html>"""
