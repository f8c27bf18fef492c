"""One model-version counter for trainers whose repositories are copies, kept in a Kubernetes ConfigMap.

With ``modelRepository.type=objectStorage`` every pod has its own copy of the repository, synced with the
bucket every minute or so, so the writer lock and ``.last_version`` of :mod:`scalerec_models.versions` hold
within one pod only: two training runs at once (the CronJob and a ``POST /v1/train``, an install's first
Job and the first scheduled one) both numbered their version one above what their copy held, and the
bucket got the files of two runs under one number (the newer file of each name wins the upload), a version
whose digests no reader accepts. The API server is a store every pod of a release can reach and that
updates an object only at the version it was read (``metadata.resourceVersion``, optimistic
concurrency), so the number is taken there: read the ConfigMap, write back one more, start again if
someone else wrote in between. Two runs then always get two numbers, whenever their copies last synced.

The ConfigMap is the chart's (``<release>-scalerec-trainer-model-versions``, made empty; the trainer's
Role may read and update that one object and nothing else); one that does not exist is created, where
the credentials may. The count lives in ``data.last_version``, which the chart never renders, so an
upgrade's three-way merge leaves it alone. The credentials are the pod's service account token (read
again for every call: the kubelet rotates it) and the cluster's CA, as every in-cluster client uses them.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

log = logging.getLogger(__name__)

COUNT_KEY = "last_version"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class VersionCounterError(RuntimeError):
    """The counter could not be read or advanced (unreachable, refused, or not a number): the run must not
    number its version on its own, so it fails naming why."""


class VersionCounter(Protocol):
    def check(self) -> int:
        """The last number handed out (0 before the first), proving the counter can be read."""
        ...

    def reserve(self, at_least: int) -> int:
        """Hand out the next number, and at least ``at_least`` (what the local copy would take)."""
        ...


@dataclass(frozen=True)
class KubernetesVersionCounter:
    """``reserve`` = compare-and-swap of ``data.last_version`` on one ConfigMap, retried on conflicts."""

    api_url: str
    namespace: str
    name: str
    token_file: Path
    ca_file: Path | str | bool = True
    timeout_s: float = 10.0
    deadline_s: float = 60.0
    transport: httpx.BaseTransport | None = None  # tests: an httpx.MockTransport in place of the network

    @classmethod
    def in_cluster(cls, name: str, service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> KubernetesVersionCounter:
        """The pod's own API server, namespace and service account; ValueError naming what is missing."""
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ValueError(
                f"MODEL_VERSION_COUNTER=kubernetes:configmap/{name} needs the Kubernetes API server: "
                "KUBERNETES_SERVICE_HOST is not set (not running in a pod)"
            )
        token = service_account_dir / "token"
        if not token.is_file():
            raise ValueError(
                f"MODEL_VERSION_COUNTER=kubernetes:configmap/{name} needs the pod's service account token at "
                f"{token} (automountServiceAccountToken is off?)"
            )
        try:
            namespace = (service_account_dir / "namespace").read_text().strip()
        except OSError as exc:
            raise ValueError(
                f"MODEL_VERSION_COUNTER=kubernetes:configmap/{name} needs the pod's namespace at "
                f"{service_account_dir / 'namespace'} ({exc})"
            ) from exc
        host = f"[{host}]" if ":" in host else host  # an IPv6 service address
        return cls(f"https://{host}:{port}", namespace, name, token, service_account_dir / "ca.crt")

    @property
    def _path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/configmaps"

    def __str__(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name}"

    def check(self) -> int:
        return self._retrying("read the count", lambda client: _count_of(self._get(client), self))

    def reserve(self, at_least: int) -> int:
        return self._retrying("take a model version number", lambda client: self._try_reserve(client, at_least))

    def _retrying(self, doing: str, attempt_once: Callable[[httpx.Client], int]) -> int:
        """``attempt_once`` until it answers, again after a conflict, a busy or unreachable server, up to the
        deadline; then VersionCounterError naming the ConfigMap (never a bare transport error)."""
        deadline = time.monotonic() + self.deadline_s
        attempt = 0
        with self._client() as client:
            while True:
                attempt += 1
                try:
                    value = attempt_once(client)
                except (httpx.TransportError, _Retry) as exc:
                    if time.monotonic() >= deadline:
                        raise VersionCounterError(
                            f"{self}: could not {doing} after {attempt} attempts in {self.deadline_s:.0f}s ({exc})"
                        ) from exc
                    # Jittered, so writers that collided do not come back in step and collide again.
                    time.sleep(random.uniform(0.5, 1.0) * min(0.05 * 2**attempt, 2.0))
                    continue
                if attempt > 1:
                    log.info("%s: %s after %d attempts", self, doing, attempt)
                return value

    def _try_reserve(self, client: httpx.Client, at_least: int) -> int:
        found = self._get(client)
        if found is None:
            version = max(1, at_least)
            body = {"metadata": {"name": self.name}, "data": {COUNT_KEY: str(version)}}
            self._answer(client.post(self._path, json=body), "create", {201})
            return version
        version = max(_count(found, self) + 1, at_least)
        found.setdefault("data", {})[COUNT_KEY] = str(version)
        # The PUT carries the resourceVersion it read: a writer in between makes it a 409, and this run reads
        # again instead of handing out the same number.
        response = client.put(f"{self._path}/{self.name}", json=found)
        if response.status_code == 404:
            raise _Retry("update: deleted since it was read")  # read again: created anew, or a 403 that says why
        self._answer(response, "update", {200})
        return version

    def _get(self, client: httpx.Client) -> dict[str, Any] | None:
        response = client.get(f"{self._path}/{self.name}")
        if response.status_code == 404:
            return None
        self._answer(response, "read", {200})
        found: dict[str, Any] = response.json()
        return found

    def _answer(self, response: httpx.Response, doing: str, ok: set[int]) -> None:
        if response.status_code in ok:
            return
        if response.status_code == 409 or response.status_code == 429 or response.status_code >= 500:
            raise _Retry(f"{doing}: HTTP {response.status_code}")  # a writer in between, or the server busy
        reason = response.text[:300]
        if response.status_code in (401, 403):
            raise VersionCounterError(
                f"{self}: the API server refused to {doing} it (HTTP {response.status_code}): the trainer's service "
                f"account needs get and update on it (create, where the chart did not make it): {reason}"
            )
        raise VersionCounterError(f"{self}: could not {doing} it (HTTP {response.status_code}): {reason}")

    def _client(self) -> httpx.Client:
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise VersionCounterError(f"{self}: no service account token at {self.token_file} ({exc})") from exc
        verify: ssl.SSLContext | bool = self.ca_file if isinstance(self.ca_file, bool) else _trusting(self.ca_file)
        return httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {token}"},
            verify=verify,
            timeout=self.timeout_s,
            # The API server is in the cluster: an HTTPS_PROXY set for the bucket or the internet must not take
            # these calls (a NO_PROXY without the service address would send them to the proxy).
            trust_env=False,
            transport=self.transport,
        )


class _Retry(Exception):
    pass


def _trusting(ca_file: Path | str) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise VersionCounterError(f"the API server's CA {ca_file} could not be read ({exc})") from exc


def _count_of(config_map: dict[str, Any] | None, counter: KubernetesVersionCounter) -> int:
    return 0 if config_map is None else _count(config_map, counter)


def _count(config_map: dict[str, Any], counter: KubernetesVersionCounter) -> int:
    raw = (config_map.get("data") or {}).get(COUNT_KEY, "0")
    try:
        value = int(raw)
    except ValueError:
        raise VersionCounterError(f"{counter}: data.{COUNT_KEY} is {raw[:40]!r}, not a version number") from None
    if value < 0:
        raise VersionCounterError(f"{counter}: data.{COUNT_KEY} is {value}, below 0")
    return value


def counter_from_setting(value: str) -> VersionCounter | None:
    """``MODEL_VERSION_COUNTER``: "" (the repository's own numbering) or ``kubernetes:configmap/<name>``."""
    if not value:
        return None
    kind, _, name = value.partition(":configmap/")
    if kind != "kubernetes" or not name:
        raise ValueError(f"MODEL_VERSION_COUNTER={value!r}: expected kubernetes:configmap/<name> or nothing")
    return KubernetesVersionCounter.in_cluster(name)
