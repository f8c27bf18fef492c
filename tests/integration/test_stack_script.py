"""scripts/stack/stack.sh itself: idempotent up/down, truthful status (Memcached only: it starts in a second)."""

from __future__ import annotations

import pytest

from .conftest import PrivateStack

pytestmark = [pytest.mark.integration]


def _pids(stack: PrivateStack) -> dict[str, str]:
    return {p.parent.name: p.read_text().strip() for p in stack.root.glob("*/pid")}


def test_up_twice_is_one_of_each_and_down_twice_is_fine(private_memcached: PrivateStack) -> None:
    stack = private_memcached
    first = _pids(stack)
    assert len(first) == 2
    stack.up("memcached")
    assert _pids(stack) == first, "a second up started another server"

    status = stack.run("status")
    lines = [line for line in status.stdout.splitlines() if line.startswith("memcached-")]
    assert len(lines) == 2 and all(" up " in line for line in lines), status.stdout

    stack.down("memcached")
    stack.down("memcached")  # nothing running: still fine
    assert _pids(stack) == {}
    assert stack.run("status").returncode == 1, "status must fail when a server is down"


def test_env_prints_urls_for_the_factory(private_stack: PrivateStack) -> None:
    private_stack.env.update(SCALEREC_KAFKA_PORT="1234", SCALEREC_MEMCACHED_PORTS="5 6")
    out = private_stack.run("env").stdout.split()
    assert "BUS_URL=kafka://127.0.0.1:1234" in out
    assert "CACHE_URL=memcached://127.0.0.1:5,127.0.0.1:6" in out
