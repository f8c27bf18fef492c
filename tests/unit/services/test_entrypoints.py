"""``python -m scalerec_<service>``: every service hands its HTTP settings to ``serve`` (through ``serve_service``).

``serve`` itself (uvicorn with those limits, one process or several) is run for real in
tests/unit/libs/test_service_workers.py; here each entry point's ``main`` runs with ``serve`` recorded.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from fastapi import FastAPI
from scalerec_core import service as core_service
from scalerec_core.http_limits import HttpLimits
from scalerec_core.settings import ServiceSettings

SERVICES = ["collector", "preprocessor", "trainer", "ranker", "evaluator"]
WITH_WORKERS = ["collector", "ranker"]  # the services that run WORKERS processes


def _run_main(service: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("AUTH", "disabled")
    entry = importlib.import_module(f"scalerec_{service}.__main__")
    calls: list[dict[str, Any]] = []

    def serve(
        app: Any, host: str, port: int, log_level: str = "info", workers: int = 1, limits: HttpLimits | None = None
    ) -> None:
        calls.append({"app": app, "host": host, "port": port, "workers": workers, "limits": limits})

    monkeypatch.setattr(core_service, "serve", serve)
    entry.get_settings.cache_clear()  # settings are read once per process: read them from this environment
    try:
        entry.main()
    finally:
        entry.get_settings.cache_clear()
    assert len(calls) == 1
    return calls[0]


@pytest.mark.parametrize("service", SERVICES)
def test_the_http_settings_reach_serve(service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HTTP_KEEP_ALIVE_S", "620")
    monkeypatch.setenv("HTTP_HEADER_TIMEOUT_S", "7")
    monkeypatch.setenv("HTTP_BODY_TIMEOUT_S", "33")
    monkeypatch.setenv("HTTP_MAX_HEADER_BYTES", "65536")
    monkeypatch.setenv("PORT", "18099")
    monkeypatch.setenv("WORKERS", "1")
    call = _run_main(service, monkeypatch)
    assert isinstance(call["app"], FastAPI)  # built, not started: nothing connects
    assert (call["port"], call["workers"]) == (18099, 1)
    assert call["limits"] == HttpLimits(keep_alive_s=620, header_timeout_s=7, body_timeout_s=33, max_header_bytes=65536)


@pytest.mark.parametrize("service", WITH_WORKERS)
def test_workers_get_the_http_settings_too(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_KEEP_ALIVE_S", "90")
    monkeypatch.setenv("HTTP_HEADER_TIMEOUT_S", "4")
    monkeypatch.setenv("WORKERS", "2")
    call = _run_main(service, monkeypatch)
    assert call["app"] == f"scalerec_{service}.main:create_app"
    assert call["workers"] == 2
    assert (call["limits"].keep_alive_s, call["limits"].header_timeout_s) == (90, 4)


def test_idle_connections_outlive_the_usual_proxies_by_default() -> None:
    """ingress-nginx and AWS ALB keep idle upstream connections 60 s: the service must not close them first."""
    assert ServiceSettings().http_keep_alive_s > 60


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"PORT": "abc", "AUTH": "disabled"}, "port"),
        ({}, "no API_KEYS configured"),
        ({"API_KEYS": "k1:ingest+bogus"}, "unknown scope"),
    ],
)
def test_a_bad_configuration_is_one_message_and_exit_2_not_a_traceback(
    env: dict[str, str], says: str, tmp_path: Any
) -> None:
    import os
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if k not in ("API_KEYS", "AUTH", "PORT")}
    environ.update({"DATA_DIR": str(tmp_path), **env})
    done = subprocess.run(
        [sys.executable, "-m", "scalerec_collector"], env=environ, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "scalerec_collector: invalid configuration" in done.stderr and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_scalerec_serve_with_a_bad_configuration_says_why_and_leaves_nothing_running(tmp_path: Any) -> None:
    """One service exiting at start (here the evaluator, on a bad PROMOTION) left the four others listening,
    in sessions of their own that Ctrl-C did not reach, and the CLI ended in a traceback."""
    import os
    import subprocess
    import sys

    from scalerec_core.service import free_port

    base = free_port()
    while any(_listening(p) for p in range(base, base + 5)):
        base = free_port()
    done = subprocess.run(
        [
            *(sys.executable, "-m", "scalerec_cli", "serve", "--data-dir", str(tmp_path)),
            *("--base-port", str(base), "--env", "PROMOTION=bogus"),
        ],
        env={**os.environ, "SCALEREC_REAL_BACKENDS": "0"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "scalerec serve: evaluator exited with 2" in done.stderr and "promotion" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not [p for p in range(base, base + 5) if _listening(p)]


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_scalerec_serve_runs_open_only_when_no_keys_are_given_anywhere() -> None:
    from scalerec_cli.serve import service_env

    assert service_env([], {}) == {"AUTH": "disabled"}
    assert service_env(["API_KEYS=k:admin"], {}) == {"API_KEYS": "k:admin"}
    assert service_env([], {"API_KEYS": "k:admin"}) == {}  # was AUTH=disabled over the inherited keys
    assert service_env([], {"AUTH": "enabled"}) == {}


def test_a_key_that_cannot_be_sent_as_it_is_verified_is_refused_at_start() -> None:
    """Header values reach the guard as latin-1 and keys are hashed as UTF-8: `kü` could never log in."""
    from scalerec_core.auth import KeyRing

    for spec in ("kü:admin", "k ey:admin", "k\tey"):
        with pytest.raises(ValueError, match="printable ASCII"):
            KeyRing.parse(spec)
    assert KeyRing.parse("k-1.x~!:admin").verify("k-1.x~!") is not None
