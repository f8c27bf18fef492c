"""Top-10 of a fixed set of users from the ranker in process, as JSON, to compare two versions of the code.

    .venv/bin/python benchmarks/compare_top10.py OUT.json [--data-dir var/demo] [--candidates-per-source N]

Run it on two checkouts over the same data and model version (PYTHONPATH pointing at the older
checkout's libs/ and services/*/src) and diff the files: docs/benchmarks.md records the result.
Fresh-item exploration slots are off, so the order depends only on candidates and scores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from inprocess import settled_versions
from scalerec_ranker.config import RankerSettings
from scalerec_ranker.main import create_app


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--data-dir", type=Path, default=Path("var/demo"))
    ap.add_argument("--candidates-per-source", type=int, default=None)
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--every", type=int, default=30)
    args = ap.parse_args()
    d = args.data_dir.resolve()
    extra = {"candidates_per_source": args.candidates_per_source} if args.candidates_per_source else {}
    settings = RankerSettings(
        data_dir=d,
        model_repository=d / "model_repository",
        log_level="WARNING",
        fresh_item_slots=0,
        auth="disabled",
        **extra,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        rec = app.state.recommender
        served = await settled_versions(rec)
        print(f"serving {served}")
        out = {}
        for u in range(0, args.users, args.every):
            r = await rec.recommend(f"u{u:05d}", 10, "mobile", "en-US")
            out[r.user_id] = [[i.item_id, i.source, round(i.score, 4), i.because] for i in r.items]
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
