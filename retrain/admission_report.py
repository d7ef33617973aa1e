"""The admission page: one self-contained HTML page that says, for a person who did not write
the code, what happened to each new partition and why (plots inlined as PNG).

Per partition: its status in words, the problems that quarantined it or the warnings it was
admitted with, the table of every feature's drift statistics, and for every drifted feature a
plot of the reference distribution against the new one. Rendering is pure (an
`AdmissionReport` in, HTML out); matplotlib runs with the Agg backend. Every piece of text that
comes from the data (partition values, column names, categories) is escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from itertools import pairwise

from retrain.admit import AdmissionPolicy, AdmissionReport, PartitionVerdict
from retrain.drift import OTHER, UNSEEN, DriftReport, FeatureDrift, Shares
from retrain.report import _plt, _png, _table

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
h3{font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0} td,th{padding:.25em .7em;border:1px solid #ddd;
text-align:left;font-size:.9em;vertical-align:top}
.status{font-weight:bold;padding:.15em .5em;border-radius:4px;display:inline-block}
.admitted{background:#dafbe1} .warned{background:#fff8c5} .quarantined{background:#ffebe9}
.drifted{color:#cf222e;font-weight:bold} .note{background:#f6f8fa;padding:.6em 1em;
border-left:4px solid #d0d7de} figure{margin:1em 0} figcaption{font-size:.9em;color:#555}
img{max-width:100%}
"""

#: status -> the words a person reads
STATUS_WORDS = {
    "admitted": "admitted",
    "warned": "admitted with warnings",
    "quarantined": "quarantined",
}

_MEANING = """
<div class="note">
<p><b>What the statuses mean.</b> Every partition the serving model (the champion) never saw is
checked against a compact sketch of the champion's training data before any training:
row count, schema, value ranges, missing rates, unseen categories and the distribution of
every feature.</p>
<ul>
<li><span class="status admitted">admitted</span>: nothing notable; the partition is used.</li>
<li><span class="status warned">admitted with warnings</span>: the partition is used, but some
features changed (listed below): worth a look.</li>
<li><span class="status quarantined">quarantined</span>: the partition is <b>left on disk,
untouched, and excluded from training</b> (and from the holdout) in this cycle and every later
one, <b>as long as its content stays the same</b>. Nothing is moved or deleted; the refusal is
a record in {record}, keyed by the partition and the digest of its content.</li>
</ul>
<p><b>How to re-admit a quarantined partition.</b> If the data is wrong (a unit change or a
broken export upstream), fix it and rewrite the partition's files: new content has a new
digest, and the next cycle judges it again. If the data is right as it is, release it:
<code>retrain readmit VALUE --config retrain.yaml --reason "..."</code> appends a release to
{record} and records the reason in the ledger; the next cycle trains on it without judging it
again. To stop such refusals, relax the <code>admission:</code> settings (for example
<code>on_drift: warn</code>, <code>on_out_of_range: warn</code>, the defaults).</p>
</div>
"""


def _fmt(value: float | None, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _plain(text: str, limit: int = 40) -> str:
    """Text for matplotlib: shortened, and ``$`` escaped (it would start mathtext)."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _bin_labels(edges: tuple[float, ...]) -> list[str]:
    if not edges:
        return ["all values"]
    inner = [f"({a:.4g}, {b:.4g}]" for a, b in pairwise(edges)]
    return [f"≤ {edges[0]:.4g}", *inner, f"> {edges[-1]:.4g}"]


def _category_labels(shares: Shares) -> tuple[list[int], list[str]]:
    """Positions and labels of the bars to draw: empty pooled buckets are left out."""
    names = {OTHER: "(other)", UNSEEN: "(unseen)"}
    keep, labels = [], []
    for i, category in enumerate(shares.categories):
        if category in names and shares.reference[i] == 0 and shares.new[i] == 0:
            continue
        keep.append(i)
        labels.append(names.get(category, _plain(category, 20)))
    return keep, labels


def _caption(feature: FeatureDrift) -> str:
    missing = (f"missing {feature.missing_rate_ref:.1%} → {feature.missing_rate_new:.1%}")
    effect = (f"PSI {_fmt(feature.psi, '.3f')}" if feature.kind == "numeric"
              else f"JS {_fmt(feature.js_distance, '.3f')}")
    return f"{effect}, {missing}; drifted: {', '.join(feature.causes)}"


def _drift_plot(feature: FeatureDrift, label: str) -> str:
    """One figure: the reference's shares against the new data's, bin by bin or category by
    category; without values on one side, the missing rates (the only thing to compare)."""
    plt = _plt()
    shares = feature.shares
    if shares is None:
        fig, ax = plt.subplots(figsize=(5, 2.6))
        ax.bar([0, 1], [feature.missing_rate_ref, feature.missing_rate_new],
               color=["#8c959f", "#0969da"])
        ax.set_xticks([0, 1], ["reference", "new"])
        ax.set_ylabel("missing rate")
        ax.set_title(_plain(f"{label}: no values on one side; missing rates", 80), fontsize=10)
        return _png(fig)
    if feature.kind == "numeric":
        keep, labels = list(range(len(shares.reference))), _bin_labels(shares.edges)
        xlabel = "reference bins (equal frequency in the reference)"
    else:
        keep, labels = _category_labels(shares)
        xlabel = "category (most frequent in the reference first)"
    positions = list(range(len(keep)))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.38 * len(keep) + 1.5), 3.4))
    width = 0.4
    ax.bar([p - width / 2 for p in positions], [shares.reference[i] for i in keep], width,
           label="reference (champion's training data)", color="#8c959f")
    ax.bar([p + width / 2 for p in positions], [shares.new[i] for i in keep], width,
           label="new partition", color="#0969da")
    ax.set_xticks(positions, labels, rotation=60, ha="right", fontsize=7)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("share of non-missing values", fontsize=8)
    ax.set_title(_plain(f"{label} ({feature.kind}): {_caption(feature)}", 110), fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def _feature_rows(drift: DriftReport) -> list[list[str]]:
    e = html.escape
    features = [(f.name, f) for f in drift.features]
    if drift.target is not None:
        features.append((f"{drift.target.name} (target, not counted)", drift.target))
    rows = []
    for label, f in features:
        numeric = f.kind == "numeric"
        test = "KS D" if numeric else f"chi2 ({f.dof} dof)" if f.dof is not None else "chi2"
        statistic = f.ks_statistic if numeric else f.chi2
        effect = (f"PSI {_fmt(f.psi, '.3f')}" if numeric else f"JS {_fmt(f.js_distance, '.3f')}")
        drifted = (f'<span class="drifted">yes</span> ({e(", ".join(f.causes))})'
                   if f.drifted else "no")
        rows.append([
            e(label), f.kind, f"{e(test)} {_fmt(statistic)}", effect, _fmt(f.p_value, ".2g"),
            _fmt(f.p_adjusted, ".2g"),
            f"{f.missing_rate_ref:.1%} → {f.missing_rate_new:.1%}", drifted, e(f.reason),
        ])
    return rows


def _drift_section(drift: DriftReport, partition: str) -> str:
    e = html.escape
    if drift.insufficient_data:
        return (f"<p>Distribution not checked: {drift.rows} rows, fewer than the drift check's "
                f"min_rows {drift.policy.min_rows}.</p>")
    policy = drift.policy
    head = (f"<p>{len(drift.drifted)} of {len(drift.features)} features drifted "
            f"({drift.drifted_share:.0%}; the partition as a whole drifts above "
            f"{policy.max_drifted_share:.0%}) on {drift.rows:,} rows. A feature drifts when its "
            f"test is significant after the Benjamini-Hochberg adjustment across features "
            f"(p &lt; {policy.alpha:g}) <i>and</i> the shift is material (PSI ≥ "
            f"{policy.psi_threshold:g} for numbers, Jensen-Shannon distance ≥ "
            f"{policy.js_threshold:g} for categories), or when its missing rate moves by more "
            f"than {policy.missing_rate_jump:.0%}, or when more than "
            f"{policy.max_unseen_share:.0%} of its values are categories the reference never "
            f"had.</p>")
    adjusted = "BH p" if policy.fdr else "p (not adjusted)"
    table = _table(_feature_rows(drift), ["feature", "kind", "test statistic", "effect",
                                          "p", adjusted, "missing ref → new", "drifted", "why"])
    drifted = [(f.name, f) for f in drift.features if f.drifted]
    if drift.target is not None and drift.target.drifted:
        drifted.append((f"{drift.target.name} (target)", drift.target))
    plots = "".join(
        f'<figure data-partition="{e(partition)}" data-feature="{e(name)}">'
        f"{_drift_plot(f, name)}<figcaption>{e(name)}: {e(_caption(f))}</figcaption></figure>"
        for name, f in drifted
    )
    plots_head = ("<h3>Drifted features: reference against new</h3>" if drifted
                  else "<p>No feature drifted: nothing to plot.</p>")
    return f"{head}{table}{plots_head}{plots}"


def _partition_section(verdict: PartitionVerdict) -> str:
    e = html.escape
    words = STATUS_WORDS.get(verdict.status, verdict.status)
    parts = [f'<h2 id="partition-{e(verdict.partition)}">Partition {e(verdict.partition)} '
             f'<span class="status {e(verdict.status)}">{e(words)}</span></h2>',
             f"<p>{verdict.rows:,} rows.</p>"]
    if verdict.problems:
        parts.append("<h3>Why it was quarantined</h3><ul>"
                     + "".join(f"<li>{e(p)}</li>" for p in verdict.problems) + "</ul>")
    if verdict.warnings:
        parts.append("<h3>Warnings</h3><ul>"
                     + "".join(f"<li>{e(w)}</li>" for w in verdict.warnings) + "</ul>")
    if verdict.drift is None:
        parts.append("<p>Distribution not checked: the partition failed an earlier check "
                     "(row count or schema), so its columns cannot be compared.</p>")
    else:
        parts.append(_drift_section(verdict.drift, verdict.partition))
    return "".join(parts)


def _summary_table(report: AdmissionReport) -> str:
    e = html.escape
    rows = []
    for v in report.partitions:
        drifted = "-" if v.drift is None or v.drift.insufficient_data else (
            f"{len(v.drift.drifted)} of {len(v.drift.features)}")
        why = "; ".join(v.problems or v.warnings) or "ok"
        rows.append([
            f'<a href="#partition-{e(v.partition)}">{e(v.partition)}</a>',
            f'<span class="status {e(v.status)}">{e(STATUS_WORDS.get(v.status, v.status))}'
            "</span>",
            f"{v.rows:,}", drifted, e(why if len(why) <= 300 else why[:299] + "…"),
        ])
    return _table(rows, ["partition", "status", "rows", "features drifted", "why"])


def _policy_table(policy: AdmissionPolicy) -> str:
    rows = [
        ["min_rows", f"{policy.min_rows:,}", "fewer rows: quarantined"],
        ["range_margin", f"{policy.range_margin:.0%}",
         "a number may exceed the reference's [min, max] by this share of its range"],
        ["max_out_of_range_share", f"{policy.max_out_of_range_share:.1%}",
         "more values out of range than this in a feature: out of range"],
        ["on_out_of_range", html.escape(policy.on_out_of_range),
         "what values out of range do (infinite or all-missing values always quarantine)"],
        ["on_drift", html.escape(policy.on_drift),
         "what a partition-wide distribution drift does"],
    ]
    return _table(rows, ["admission setting", "value", "meaning"])


def render_admission_report(
    report: AdmissionReport, *, title: str, reference: Mapping[str, str] | None = None,
    policy: AdmissionPolicy | None = None, record: str | None = None,
) -> str:
    """The admission page as one HTML string.

    ``reference`` describes what the partitions were compared with (e.g. the champion's
    version, the cycle); ``policy`` adds the admission settings in force; ``record`` is the
    path of the quarantine record, named in the instructions for re-admission.
    """
    e = html.escape
    where = f"<code>{e(record)}</code>" if record else "<code>quarantine.jsonl</code>"
    context = (_table([[e(k), e(str(v))] for k, v in reference.items()],
                      ["compared with", ""]) if reference else "")
    counts = {s: sum(p.status == s for p in report.partitions) for s in STATUS_WORDS}
    if report.partitions:
        overview = (f"<p>{len(report.partitions)} new partition(s): {counts['admitted']} "
                    f"admitted, {counts['warned']} admitted with warnings, "
                    f"{counts['quarantined']} quarantined.</p>{_summary_table(report)}")
    else:
        overview = "<p>No new partitions: nothing to judge.</p>"
    sections = "".join(_partition_section(v) for v in report.partitions)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{e(title)}</h1>
{overview}{context}{_policy_table(policy) if policy else ""}
{_MEANING.format(record=where)}
{sections}
</body></html>"""
