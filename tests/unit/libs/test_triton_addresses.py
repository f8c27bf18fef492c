"""Naming Triton's replicas: one name that resolves to each pod, or a list of addresses."""

from __future__ import annotations

import asyncio

import pytest
from scalerec_adapters.factory import make_scorer, triton_replica_urls
from scalerec_adapters.triton_scorer import TritonScorer, grpc_target


def test_one_name_is_dialled_as_it_is_and_a_list_of_ips_as_grpcs_address_list() -> None:
    assert grpc_target("triton-ready:8001") == "triton-ready:8001"  # gRPC resolves it: every address
    assert grpc_target("10.0.0.2:8001,10.0.0.1:8001") == "ipv4:10.0.0.2:8001,10.0.0.1:8001"
    assert grpc_target("[fd00::1]:8001,[fd00::2]:8001") == "ipv6:[fd00::1]:8001,[fd00::2]:8001"
    with pytest.raises(ValueError, match="headless Service"):
        grpc_target("triton-a:8001,triton-b:8001")  # gRPC cannot balance over several names


def test_make_scorer_keeps_every_address_of_the_url() -> None:
    scorer = make_scorer("triton://10.0.0.1:8001,10.0.0.2:8002?timeout=0.5", repository=None, control="false")  # type: ignore[arg-type]
    assert isinstance(scorer, TritonScorer)
    assert scorer.target == "ipv4:10.0.0.1:8001,10.0.0.2:8002" and scorer.timeout == 0.5 and not scorer.control


def test_the_evaluator_controls_each_address_a_name_resolves_to() -> None:
    # localhost is 127.0.0.1 and ::1 on most machines: one server, taken once (IPv4 first).
    assert triton_replica_urls("triton://localhost:8001?timeout=2") == ["triton://127.0.0.1:8001?timeout=2"]
    assert triton_replica_urls("triton://127.0.0.2:8001,127.0.0.1:8002,127.0.0.2:8001") == [
        "triton://127.0.0.1:8002",
        "triton://127.0.0.2:8001",
    ]
    assert triton_replica_urls("triton://[::1]:8001") == ["triton://[::1]:8001"]


async def test_the_channel_is_made_again_after_refresh_seconds_and_the_old_one_closed() -> None:
    """gRPC resolves a name again only when a connection fails: a new channel finds replicas added since."""
    scorer = TritonScorer("127.0.0.1:9", refresh=0.5, timeout=0.1, load_timeout=0.1)
    first = scorer._get_client()
    assert scorer._get_client() is first
    await asyncio.sleep(0.6)
    second = scorer._get_client()
    assert second is not first and first in scorer._retired  # closed once its calls could have finished
    await asyncio.sleep(1.3)  # the longest call it could carry (load_timeout) and a second
    assert first not in scorer._retired
    await scorer.close()


def test_the_evaluator_refuses_a_bad_triton_url_at_start_not_at_a_promotion(tmp_path: object) -> None:
    from scalerec_evaluator.serving import ServingController

    with pytest.raises(ValueError, match="timout"):
        ServingController(tmp_path, set, triton_url="triton://127.0.0.1:8001?timout=1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="headless Service"):
        ServingController(tmp_path, set, triton_url="triton://triton-a:8001,triton-b:8001")  # type: ignore[arg-type]
