"""Simulated shoppers for an online experiment: ask the ranker, click what their taste likes, send feedback.

A shopper's taste is the synthetic shop's own: the share of each category in what that user viewed,
clicked and bought in the generated history (which the generator drew from the user's taste
mix).  Shown a list, the shopper looks down it and clicks an item with a probability that grows
with how much they like its category and falls with its position (position bias); a click
sometimes leads to an add-to-cart.  Feedback goes back through the collector with the answer's
``request_id``, ``variant`` and ``model_version``, exactly as an app sends it, so the evaluator
joins it to the impression.  A better model shows each shopper more of what they like, and the
experiment sees it as a higher CTR.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from scalerec_synthetic import Shop

from scalerec_cli.driver import client as driver_client
from scalerec_cli.driver import post_with_retries

# P(click) of the favourite category's item at the top of the list: low enough that most answers get no
# click (CTR ~0.4 in the demo), so the share of answers clicked can tell two models apart.
P_CLICK_TOP = 0.15
P_CART = 0.25  # P(add to cart | click)


def tastes(shop: Shop) -> dict[str, dict[str, float]]:
    """Per user, each category's share of their generated interactions, scaled so the favourite is 1."""
    category = {i.item_id: i.category for i in shop.items}
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for e in shop.events:
        if e.type.value != "impression":
            counts[e.user_id][category.get(e.item_id, "unknown")] += 1
    out = {}
    for user, c in counts.items():
        top = max(c.values())
        out[user] = {cat: n / top for cat, n in c.items()}
    return out


@dataclass
class Traffic:
    requests: int = 0
    clicks: int = 0
    carts: int = 0
    per_variant: Counter[str] = field(default_factory=Counter)
    errors: int = 0


async def simulate(
    ranker: str,
    collector: str,
    shop: Shop,
    requests: int,
    *,
    seed: int = 1,
    concurrency: int = 8,
    progress: Callable[[int], None] | None = None,
) -> Traffic:
    taste = tastes(shop)
    category = {i.item_id: i.category for i in shop.items}
    users = [u for u in shop.users if u in taste]
    rng = random.Random(seed)
    plan = [rng.choice(users) for _ in range(requests)]
    traffic = Traffic()
    sem = asyncio.Semaphore(concurrency)

    async def shopper(client: httpx.AsyncClient, n: int, user: str) -> None:
        local = random.Random(seed * 1_000_003 + n)
        async with sem:
            r = await client.get(f"{ranker}/v1/recommendations", params={"user_id": user, "k": 10})
            if r.status_code != 200:
                traffic.errors += 1
                return
            body: dict[str, Any] = r.json()
            traffic.requests += 1
            traffic.per_variant[str(body.get("variant"))] += 1
            context = {
                "referrer": "recommendation",
                "request_id": body["request_id"],
                "variant": body.get("variant"),
                "model_version": body.get("model_version"),
            }
            events = []
            now = datetime.now(UTC).isoformat()
            for pos, item in enumerate(body["items"]):
                like = taste[user].get(category.get(item["item_id"], ""), 0.0)
                if local.random() < P_CLICK_TOP * like / (1 + 0.3 * pos):
                    kinds = ["click"] + (["add_to_cart"] if local.random() < P_CART else [])
                    for kind in kinds:
                        events.append(
                            {
                                "event_id": f"sim-{uuid.uuid4().hex}",
                                "user_id": user,
                                "item_id": item["item_id"],
                                "type": kind,
                                "timestamp": now,
                                "context": context,
                            }
                        )
                    traffic.clicks += 1
                    traffic.carts += len(kinds) - 1
            if events:
                sent = await post_with_retries(client, f"{collector}/v1/events", {"events": events}, attempts=10)
                if sent is None or sent.status_code != 202:
                    traffic.errors += 1
            if progress:
                progress(1)

    async with driver_client(30) as client:
        await asyncio.gather(*(shopper(client, n, u) for n, u in enumerate(plan)))
    return traffic
