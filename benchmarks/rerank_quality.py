"""What the ranker's category cap (CATEGORY_CAP) costs in relevance, on the evaluator's own holdout.

    .venv/bin/python benchmarks/rerank_quality.py [--data-dir var/demo] [--version N] [--caps 1,0.7,0.5,0.3]

The evaluator judges a version on its model's full ranking of the catalogue (and reports the lists it would
serve, cap included, as ``served_ndcg@10``); the ranker re-ranks what it serves, with at most ceil(k x CATEGORY_CAP) items (at least 2) of one category in an answer. This scores
the evaluator's holdout (each user's first new item after the version's training window, the history the
preprocessor recorded for it, past items excluded) with the version's model exactly as the evaluator does,
applies the cap to each ranking, and prints HR@10 and NDCG@10 for each cap, with cap 1 (none) as the floor.
It also prints how often the target's category is one of the user's history's, and how often a capped top 10
keeps the target that the uncapped one had.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from scalerec_adapters.embedded.onnx_scorer import OnnxRuntimeScorer
from scalerec_adapters.embedded.sqlite_store import SqliteStore
from scalerec_evaluator.holdout import build_holdout
from scalerec_evaluator.offline import model_scores
from scalerec_models import candidates
from scalerec_models import repository as repo

K = 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path("var/demo"))
    ap.add_argument("--version", type=int, default=None, help="default: the champion")
    ap.add_argument("--caps", default="1,0.7,0.5,0.3")
    ap.add_argument("--max-users", type=int, default=2000, help="as the evaluator's MAX_EVAL_USERS")
    args = ap.parse_args()
    repository = args.data_dir / "model_repository"
    version = args.version or repo.read_champion(repository, repo.RANKER_MODEL)
    if version is None:
        raise SystemExit(f"no champion in {repository}: pass --version")
    card = repo.read_card(repository, repo.RANKER_MODEL, version)
    cut = int(card.get("data_window", {}).get("end_ms") or 0)
    store = SqliteStore(args.data_dir / "store.db")
    try:
        holdout = build_holdout(store, cut, args.max_users)
    finally:
        store.close()
    codes: dict[str, int] = {}
    category = np.asarray([candidates.category_code(c, codes) for c in holdout.categories])
    scores = model_scores(repository, version, holdout, OnnxRuntimeScorer(repository))(np.arange(len(holdout.users)))
    for row, cols in enumerate(holdout.exclusions()):
        scores[row, cols] = -np.inf
    orders = np.argsort(-scores, axis=1, kind="stable")
    in_history = np.mean(
        [
            category[t] in {category[holdout.index[h]] for h in hist if h in holdout.index}
            for hist, t in zip(holdout.histories, holdout.targets, strict=True)
        ]
    )
    print(
        f"v{version}, holdout of {len(holdout.users):,} users over {len(holdout.items):,} items; the target's category "
        f"is in the user's history for {in_history:.1%}"
    )
    print()
    print("| CATEGORY_CAP | per category | HR@10 | NDCG@10 | ratio to no cap (NDCG) | hits kept |")
    print("|---|---|---|---|---|---|")
    floor_ndcg, floor_hits = None, None
    for cap in [float(c) for c in args.caps.split(",")]:
        per = candidates.per_category(K, cap)
        hits, ndcg = [], 0.0
        for order, target in zip(orders, holdout.targets, strict=True):
            top = candidates.rerank(order, category, K, per)
            hit = target in top
            hits.append(hit)
            ndcg += 1 / math.log2(top.index(target) + 2) if hit else 0.0
        ndcg /= len(holdout.users)
        hr = float(np.mean(hits))
        if floor_ndcg is None:
            floor_ndcg, floor_hits = ndcg, np.asarray(hits)
        kept = (np.asarray(hits) & floor_hits).sum() / max(floor_hits.sum(), 1)
        print(f"| {cap:g} | {per} | {hr:.4f} | {ndcg:.4f} | {ndcg / floor_ndcg:.3f} | {kept:.1%} |")


if __name__ == "__main__":
    main()
