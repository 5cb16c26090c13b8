"""The promotion gate: may a candidate version become `champion`? A pure decision, no I/O.

A candidate passes when ALL hold:
  1. floor:         candidate F1 >= min_f1
  2. no regression: candidate F1 - champion F1 >= -max_regression, both scored on the same test rows
                    (trivially true when there is no champion yet)
  3. significance (only with require_significance = P > 0, and a champion): the candidate's F1 is higher and
                    McNemar's exact test on the paired test predictions gives p < P
Whatever the thresholds, a model that predicts one class for every test review never passes (an F1 from the
class balance alone is no model), and, unless --ignore-baseline, its F1 must be above the TF-IDF baseline's on
the same test rows (`with_baseline`, steps/evaluation/baseline.py).
The verdict keeps its inputs and one human-readable reason per rule, and turns into model-version tags.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from steps import settings

DEFAULT_MIN_F1 = settings.default("min-f1")
DEFAULT_MAX_REGRESSION = settings.default("max-regression")
# F1 values are ratios of small integers computed the same way for both models; this only absorbs
# float noise so that two equally good models compare as equal, it never hides a real difference.
TOLERANCE = 1e-9


@dataclass
class GateVerdict:
    passed: bool
    reasons: list[str]
    candidate_f1: float
    min_f1: float
    max_regression: float
    champion_version: int | None = None
    champion_f1: float | None = None
    f1_delta: float | None = None
    extra: dict = field(default_factory=dict)  # e.g. McNemar p-value, test rows: recorded, not decided on
    require_significance: float = 0.0  # 0 = off; else the McNemar p-value a better candidate must stay below

    def tags(self) -> dict:
        """Model-version tags: gate=passed|failed, the reasons, and every input the decision used."""
        tags = {
            "gate": "passed" if self.passed else "failed",
            "gate.reasons": "; ".join(self.reasons),
            "gate.candidate_f1": f"{self.candidate_f1:.6f}",
            "gate.min_f1": str(self.min_f1),
            "gate.max_regression": str(self.max_regression),
            "gate.champion_version": "none" if self.champion_version is None else str(self.champion_version),
        }
        if self.require_significance:
            tags["gate.require_significance"] = str(self.require_significance)
        if self.champion_f1 is not None:
            tags["gate.champion_f1"] = f"{self.champion_f1:.6f}"
        if self.f1_delta is not None:
            tags["gate.f1_delta"] = f"{self.f1_delta:+.6f}"
        tags.update({f"gate.{k}": str(v) for k, v in self.extra.items()})
        return tags

    def as_dict(self) -> dict:
        return asdict(self)


def check_thresholds(min_f1: float, max_regression: float) -> None:
    settings.check({"min-f1": min_f1, "max-regression": max_regression})


def check_promote_mode(mode: str) -> None:
    settings.check({"promote": mode})


def judge(candidate_f1: float, min_f1: float = DEFAULT_MIN_F1, max_regression: float = DEFAULT_MAX_REGRESSION,
          champion_f1: float | None = None, champion_version: int | None = None, extra: dict | None = None,
          require_significance: float = 0.0, mcnemar_p: float | None = None) -> GateVerdict:
    """The verdict for a candidate with test F1 `candidate_f1` against the champion's F1 on the same rows
    (and, with `require_significance`, McNemar's p-value `mcnemar_p` on the paired predictions)."""
    check_thresholds(min_f1, max_regression)
    settings.check({"require-significance": require_significance})
    reasons = []
    if candidate_f1 is None or not math.isfinite(candidate_f1):
        return GateVerdict(False, [f"candidate F1 is not a number ({candidate_f1}); nothing to judge"],
                           float("nan"), min_f1, max_regression, champion_version, champion_f1, None, extra or {})
    clears_floor = candidate_f1 >= min_f1 - TOLERANCE
    reasons.append(f"F1 {candidate_f1:.4f} {'>=' if clears_floor else '<'} floor {min_f1:g}")
    delta = None
    if champion_version is None:
        no_regression = True
        reasons.append("no champion to compare with")
    elif champion_f1 is None or not math.isfinite(champion_f1):
        no_regression = False
        reasons.append(f"champion v{champion_version} could not be scored on the same test rows")
    else:
        delta = candidate_f1 - champion_f1
        no_regression = delta >= -max_regression - TOLERANCE
        reasons.append(f"F1 {delta:+.4f} vs champion v{champion_version} ({champion_f1:.4f}): "
                       f"{'within' if no_regression else 'exceeds'} the allowed regression {max_regression:g}")
    significant = True
    if require_significance and delta is not None:
        significant = delta > TOLERANCE and mcnemar_p is not None and mcnemar_p < require_significance
        reasons.append(f"McNemar p = {'n/a' if mcnemar_p is None else f'{mcnemar_p:.4g}'} "
                       f"{'<' if significant else 'not <'} {require_significance:g} for a better F1 "
                       f"({'significant' if significant else 'not significant'}, --require-significance)")
    return GateVerdict(clears_floor and no_regression and significant, reasons, float(candidate_f1), min_f1,
                       max_regression, champion_version, champion_f1, delta, extra or {}, require_significance)


def judge_evaluation(test_metrics: dict, champion_version: int | None, comparison: dict | None,
                     min_f1: float = DEFAULT_MIN_F1, max_regression: float = DEFAULT_MAX_REGRESSION,
                     require_significance: float = 0.0) -> GateVerdict:
    """The gate for a freshly evaluated model: its test F1, and the champion's F1 on the same test rows.

    `champion_version` is the champion when evaluation started; `comparison`
    (steps.evaluation.metrics.compare_with_champion) is None when there was no champion, or when it could not be
    scored (then the gate fails).
    """
    extra = {"test_rows": test_metrics.get("rows")}
    champion_f1 = mcnemar_p = None
    if comparison is not None:
        champion_f1 = comparison["champion"]["f1"]
        mcnemar_p = comparison["mcnemar"]["p_value"]
        extra["mcnemar_p_value"] = f"{mcnemar_p:.4g}"
    return with_one_class_rule(judge(test_metrics["f1"], min_f1, max_regression, champion_f1, champion_version, extra,
                                     require_significance, mcnemar_p), test_metrics)


def one_class_reason(test_metrics: dict) -> str | None:
    """Why the model is no classifier, when it predicted the same class for every test review; else None."""
    rows = test_metrics.get("rows") or 0
    predicted_positive = test_metrics.get("true_positives", 0) + test_metrics.get("false_positives", 0)
    if rows and predicted_positive in (0, rows):
        which = "positive" if predicted_positive else "negative"
        return f"predicts {which} for all {rows} test reviews: not a classifier (never promoted, whatever the options)"
    return None


def with_one_class_rule(verdict: GateVerdict, test_metrics: dict) -> GateVerdict:
    """The verdict, failed with the reason when the model predicts one class for every test review."""
    from dataclasses import replace

    reason = one_class_reason(test_metrics)
    if reason is None:
        return verdict
    return replace(verdict, passed=False, reasons=[*verdict.reasons, reason],
                   extra={**verdict.extra, "one_class": "true"})


def with_baseline(verdict: GateVerdict, baseline_f1: float | None, ignore_baseline: bool = False) -> GateVerdict:
    """The verdict with the baseline rule: the candidate's F1 must be above the TF-IDF baseline's F1 on the same
    test rows (`--ignore-baseline` records the comparison but does not decide on it). A baseline that could not
    be scored (None) fails the rule unless it is ignored."""
    from dataclasses import replace

    extra = {**verdict.extra, "ignore_baseline": str(bool(ignore_baseline)).lower()}
    if baseline_f1 is not None and math.isfinite(baseline_f1):
        extra["baseline_f1"] = f"{baseline_f1:.6f}"
        above = verdict.candidate_f1 > baseline_f1 + TOLERANCE
        reason = (f"F1 {verdict.candidate_f1:.4f} {'>' if above else '<='} TF-IDF baseline {baseline_f1:.4f}"
                  + (" (not required: --ignore-baseline)" if ignore_baseline else ""))
    else:
        above = False
        reason = "the TF-IDF baseline could not be scored" + (" (ignored: --ignore-baseline)" if ignore_baseline
                                                              else "")
    passed = verdict.passed and (above or ignore_baseline)
    return replace(verdict, passed=passed, reasons=[*verdict.reasons, reason], extra=extra)
