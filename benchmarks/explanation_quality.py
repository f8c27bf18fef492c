"""How often the ranker's explanations and similar items name an item of the same category.

    .venv/bin/python benchmarks/explanation_quality.py [--data-dir var/demo] [--every 5]

The ranker in process over a `make demo` data folder (fresh-item slots off), asked for the top 10 of
every ``--every``-th user of the synthetic shop, then for the 10 items similar to every ``--every``-th
item. The shop's users each like a few categories and nothing else relates two categories, so an item
of the same category is what "alike" means there: a "because you viewed X" naming an item of another
category is one a user would find unrelated. Printed per served version: the items recommended, the
share explained, the share of those explained by an item of their own category, and how many
recommended items had their category in the user's history at all (the most that can be explained
well); then the similar items' same-category share by source. Run it on two checkouts over the same
data (``PYTHONPATH`` pointing at the older one's libs/ and services/*/src) to compare; docs/benchmarks.md
("Explanations and similar items") records the results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from inprocess import App, request, settled_versions
from scalerec_events.models import EventType
from scalerec_ranker.config import RankerSettings
from scalerec_ranker.main import create_app

_IMPRESSION = EventType.IMPRESSION.value


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path("var/demo"))
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--every", type=int, default=5)
    args = ap.parse_args()
    d = args.data_dir.resolve()
    settings = RankerSettings(
        data_dir=d, model_repository=d / "model_repository", log_level="WARNING", fresh_item_slots=0, auth="disabled"
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        rec = app.state.recommender
        served = await settled_versions(rec)
        print(f"serving {served}, EXPLAIN_MIN_SIMILARITY={settings.explain_min_similarity}")
        category: dict[str, str] = {}

        async def categories(ids: list[str]) -> list[str]:
            missing = [i for i in ids if i not in category]
            if missing:
                category.update({i: item.category for i, item in (await rec.lookup(missing)).items()})
            return [category.get(i, "") for i in ids]

        # version -> [recommended, explained, explained by the same category, category in the history]
        rows: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for u in range(0, args.users, args.every):
            user = f"u{u:05d}"
            history, *_ = await rec.user_state(user, asyncio.get_running_loop().time() + 5)
            seen = {h.item_id for h in history if h.type != _IMPRESSION}
            answer = await rec.recommend(user, 10, "mobile", "en-US")
            if answer.model_version is None:
                continue
            liked = set(await categories(sorted(seen)))
            row = rows[answer.model_version]
            for item in answer.items:
                own = (await categories([item.item_id]))[0]
                row[0] += 1
                row[3] += own in liked
                if item.because:
                    row[1] += 1
                    row[2] += (await categories(item.because[:1]))[0] == own
        print()
        print("| version | recommended | explained | of them, same category | category in the history |")
        print("|---|---|---|---|---|")
        for version, (n, explained, same, liked_n) in sorted(rows.items()):
            print(f"| v{version} | {n:,} | {explained / n:.1%} | {same / max(explained, 1):.1%} | {liked_n / n:.1%} |")

        model = rec.models.current
        table = model.table
        by_source: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        asked = 0
        for pos in range(2, table.size, args.every):
            item_id = table.ids[pos]
            status, body = await _similar(app, item_id)
            if status != 200:
                continue
            asked += 1
            own = (await categories([item_id]))[0]
            for item in body["items"]:
                counts = by_source[item["source"]]
                counts[0] += 1
                counts[1] += (await categories([item["item_id"]]))[0] == own
        print()
        print(f"similar items (GET /v1/items/{{id}}/similar?k=10) of {asked} items, champion v{model.version}:")
        print("| source | items | same category |")
        print("|---|---|---|")
        for source, (n, same) in sorted(by_source.items()):
            print(f"| {source} | {n:,} | {same / n:.1%} |")


async def _similar(app: App, item_id: str) -> tuple[int, dict[str, Any]]:
    status, body = await request(app, "GET", f"/v1/items/{item_id}/similar", query=b"k=10")
    return status, json.loads(body) if status == 200 else {}


if __name__ == "__main__":
    asyncio.run(main())
