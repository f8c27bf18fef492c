"""``scalerec serve``: the five services on loopback until Ctrl-C (for trying the APIs and load tests)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from scalerec_cli.cluster import SERVICES, LocalCluster


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="Run the five services on loopback until interrupted")
    p.add_argument("--data-dir", type=Path, default=Path("var/serve"))
    p.add_argument("--base-port", type=int, default=8081, help="collector gets this port, the others the next ones")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    p.set_defaults(func=run)


def service_env(given: list[str], inherited: Mapping[str, str]) -> dict[str, str]:
    """What the services get on top of the inherited environment: ``--env`` pairs, and AUTH=disabled only
    when neither names API_KEYS or AUTH (``API_KEYS=... scalerec serve`` ran open: the AUTH=disabled it
    added overrode the keys the services inherited)."""
    env = dict(e.split("=", 1) for e in given)
    if not any(name in source for name in ("API_KEYS", "AUTH") for source in (env, inherited)):
        env["AUTH"] = "disabled"
    return env


def run(args: argparse.Namespace) -> int:
    env = service_env(args.env, os.environ)
    cluster = LocalCluster(args.data_dir, env=env, ports={s: args.base_port + i for i, s in enumerate(SERVICES)})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        cluster.start_all()
    except (RuntimeError, TimeoutError) as exc:  # one service did not start (its log says why): none stays up
        cluster.stop_all()
        tail = _log_tail(cluster.log_dir / f"{str(exc).split()[0]}.log")
        print(f"scalerec serve: {exc}" + (f"\n{tail}" if tail else ""), file=sys.stderr)
        return 1
    try:
        for service in SERVICES:
            print(f"{service:13s} {cluster.url(service)}   (OpenAPI: {cluster.url(service)}/docs)")
        if env.get("AUTH") == "disabled":
            print("AUTH=disabled: the APIs are open to anyone who can reach these ports (give --env API_KEYS=...)")
        print(f"logs in {cluster.log_dir}; Ctrl-C stops everything")
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop_all()
    return 0


def _log_tail(path: Path, lines: int = 5) -> str:
    """The last lines of a service's log (where a configuration error says what is wrong), or ""."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
