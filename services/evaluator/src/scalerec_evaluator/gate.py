"""Champion/challenger gate: a candidate is promoted only when it beats the champion and every baseline."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scalerec_evaluator.schemas import EvaluationReport


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


RECALL = "candidate_recall"


def decide(
    report: EvaluationReport,
    version: int,
    champion: int | None,
    metric: str,
    min_improvement: float,
    max_recall_drop: float = 1.0,
) -> Decision:
    """Promote only a version that beats every other row of the report on ``metric`` by ``min_improvement``
    (relative), and whose candidates do not hold fewer targets than the champion's by more than
    ``max_recall_drop`` (relative): a version whose retrieval got worse serves worse lists even where its
    ranking model, measured on the whole catalogue, looks better."""
    models = report.models
    if report.users < 10:
        return Decision(False, f"holdout too small ({report.users} users) to judge")
    unmeasured = sorted(name for name, m in models.items() if metric not in m)
    if unmeasured:
        return Decision(False, f"{metric} could not be measured for {', '.join(unmeasured)}: nothing to compare")
    mine = models[f"model_v{version}"][metric]
    rivals = {name: m[metric] for name, m in models.items() if name != f"model_v{version}"}
    if champion is not None and champion != version and max_recall_drop < 1.0:
        my_recall = models[f"model_v{version}"].get(RECALL)
        their_recall = models.get(f"model_v{champion}", {}).get(RECALL)
        if (
            my_recall is not None
            and their_recall is not None
            and _dropped(my_recall, their_recall, report.users, max_recall_drop)
        ):
            return Decision(
                False,
                f"{RECALL} {my_recall:.4f} is more than {max_recall_drop:.0%} below champion model_v{champion}'s "
                f"({their_recall:.4f}) on {report.users} users: its candidates miss targets the champion's hold",
            )
    for name, value in sorted(rivals.items()):
        needed = value * (1 + min_improvement)
        if mine <= needed:
            who = "champion" if champion is not None and name == f"model_v{champion}" else "baseline"
            return Decision(False, f"{metric} {mine:.4f} does not beat {who} {name} ({value:.4f})")
    beaten = ", ".join(f"{n} {v:.4f}" for n, v in sorted(rivals.items()))
    return Decision(True, f"{metric} {mine:.4f} beats {beaten}")


def _dropped(mine: float, theirs: float, users: int, max_drop: float) -> bool:
    """Below ``theirs`` by more than ``max_drop`` of it, and by more than twice the standard error of the
    difference of two shares over ``users`` cases (so that a small holdout's chance misses do not count)."""
    se = math.sqrt((mine * (1 - mine) + theirs * (1 - theirs)) / max(users, 1))
    return mine < theirs * (1 - max_drop) and theirs - mine > 2 * se
