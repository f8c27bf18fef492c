"""The time-based holdout a candidate is judged on.

Everything before the candidate's training window end is "the past" (baselines
are fitted on it, and a user's past items are excluded from the ranking); each
user's first new item after it is the target, with the point-in-time history and
context the preprocessor recorded for that event.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
from scalerec_adapters.store import WideColumnStore
from scalerec_features import context_vector
from scalerec_storage import records as r


@dataclass
class Holdout:
    items: list[str]  # the ranking universe: the whole catalogue
    features: list[list[int]]
    index: dict[str, int]
    past_items: dict[str, set[str]]  # user → items before the cut
    popularity: Counter[str]
    categories: list[str] = field(default_factory=list)  # per item, as the catalogue has it
    available: list[bool] = field(default_factory=list)  # per item: may the ranker offer it now
    users: list[str] = field(default_factory=list)
    histories: list[list[str]] = field(default_factory=list)
    contexts: list[list[int]] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)

    def exclusions(self) -> list[list[int]]:
        out = []
        for user, hist, target in zip(self.users, self.histories, self.targets, strict=True):
            cols = {self.index[i] for i in self.past_items.get(user, set()) | set(hist) if i in self.index}
            cols.discard(target)
            out.append(sorted(cols))
        return out


def build_holdout(store: WideColumnStore, cut_ms: int, max_users: int, seed: int = 0) -> Holdout:
    catalogue = list(r.scan_catalogue(store))
    items = [it.item_id for it, _ in catalogue]
    holdout = Holdout(
        items=items,
        features=[f for _, f in catalogue],
        index={i: n for n, i in enumerate(items)},
        past_items=defaultdict(set),
        popularity=Counter(),
        categories=[it.category for it, _ in catalogue],
        available=[it.available for it, _ in catalogue],
    )
    first_new: dict[str, tuple[list[str], list[int], str]] = {}
    for ex in r.scan_examples(store):  # grouped by user, time-ordered within a user
        if ex.ts_ms < cut_ms:
            holdout.past_items[ex.user_id].add(ex.item_id)
            holdout.popularity[ex.item_id] += 1
        elif ex.user_id not in first_new and ex.item_id in holdout.index:
            if ex.item_id in holdout.past_items.get(ex.user_id, ()) or ex.item_id in ex.history:
                continue  # re-visits say little about ranking quality
            ctx = context_vector(ex.context)
            first_new[ex.user_id] = (ex.history, ctx, ex.item_id)
    users = sorted(u for u, (hist, _, _) in first_new.items() if hist)
    if len(users) > max_users:
        rng = np.random.default_rng(seed)
        users = sorted(rng.choice(users, size=max_users, replace=False).tolist())
    for user in users:
        hist, ctx, target = first_new[user]
        holdout.users.append(user)
        holdout.histories.append(hist)
        holdout.contexts.append(ctx)
        holdout.targets.append(holdout.index[target])
    return holdout
