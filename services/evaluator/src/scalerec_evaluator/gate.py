"""Champion/challenger gate: a candidate is promoted only when it beats the champion and every baseline."""

from __future__ import annotations

from dataclasses import dataclass

from scalerec_evaluator.schemas import EvaluationReport


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(
    report: EvaluationReport, version: int, champion: int | None, metric: str, min_improvement: float
) -> Decision:
    models = report.models
    mine = models[f"model_v{version}"][metric]
    rivals = {name: m[metric] for name, m in models.items() if name != f"model_v{version}"}
    if report.users < 10:
        return Decision(False, f"holdout too small ({report.users} users) to judge")
    for name, value in sorted(rivals.items()):
        needed = value * (1 + min_improvement)
        if mine <= needed:
            who = "champion" if champion is not None and name == f"model_v{champion}" else "baseline"
            return Decision(False, f"{metric} {mine:.4f} does not beat {who} {name} ({value:.4f})")
    beaten = ", ".join(f"{n} {v:.4f}" for n, v in sorted(rivals.items()))
    return Decision(True, f"{metric} {mine:.4f} beats {beaten}")
