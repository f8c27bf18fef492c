"""MODEL_VERSION_COUNTER's setting and what the counter refuses before it talks to anyone; the counter itself
against the real API server is tests/cluster/test_version_counter.py."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from scalerec_models.version_counter import (
    KubernetesVersionCounter,
    VersionCounterError,
    _count,
    counter_from_setting,
)


def test_no_setting_no_counter_and_outside_a_pod_the_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    assert counter_from_setting("") is None
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ValueError, match=r"MODEL_VERSION_COUNTER=kubernetes:configmap/c needs .*not running in a pod"):
        counter_from_setting("kubernetes:configmap/c")


def test_without_the_service_accounts_token_the_mount_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    with pytest.raises(ValueError, match=r"token at .*/token \(automountServiceAccountToken is off\?\)"):
        KubernetesVersionCounter.in_cluster("c", service_account_dir=tmp_path)
    (tmp_path / "token").write_text("t")
    (tmp_path / "namespace").write_text("recs\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    counter = KubernetesVersionCounter.in_cluster("c", service_account_dir=tmp_path)
    assert (counter.api_url, counter.namespace, str(counter)) == ("https://[fd00::1]:443", "recs", "ConfigMap recs/c")


@pytest.mark.parametrize(
    "value", ["kubernetes", "kubernetes:configmap/", "k8s:configmap/c", "kubernetes:configmap/C_1"]
)
def test_the_trainer_refuses_a_malformed_counter_setting(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    from scalerec_trainer.config import TrainerSettings

    monkeypatch.setenv("MODEL_VERSION_COUNTER", value)
    with pytest.raises(ValidationError, match="model_version_counter"):
        TrainerSettings()


@pytest.mark.parametrize(("data", "count"), [(None, 0), ({}, 0), ({"last_version": "41"}, 41)])
def test_the_count_is_read_from_data(data: dict[str, str] | None, count: int) -> None:
    counter = KubernetesVersionCounter("https://k", "ns", "c", Path("/none"))
    assert _count({"data": data}, counter) == count


@pytest.mark.parametrize("raw", ["forty", "-3", ""])
def test_a_count_that_is_not_a_version_number_fails_the_run_naming_it(raw: str) -> None:
    counter = KubernetesVersionCounter("https://k", "ns", "c", Path("/none"))
    with pytest.raises(VersionCounterError, match=r"ConfigMap ns/c: data\.last_version is"):
        _count({"data": {"last_version": raw}}, counter)


def test_an_unreachable_api_server_fails_at_the_deadline_naming_the_counter(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    counter = KubernetesVersionCounter("https://127.0.0.1:9", "ns", "c", token, False, timeout_s=0.5, deadline_s=1)
    with pytest.raises(
        VersionCounterError, match=r"ConfigMap ns/c: could not take a model version number after \d+ attempts"
    ):
        counter.reserve(1)


class FakeApiServer:
    """The ConfigMap API's answers for one object, with resourceVersion checks, as an httpx.MockTransport;
    ``script`` forces answers (status codes) for the next requests, in order."""

    def __init__(self, count: int | None = None, script: list[int] | None = None) -> None:
        self.version = 1
        self.data = None if count is None else {"last_version": str(count)}
        self.script = list(script or [])
        self.calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request.method)
        if self.script:
            return httpx.Response(self.script.pop(0), json={"kind": "Status"})
        assert request.headers["Authorization"] == "Bearer t0ken"
        if request.method == "GET":
            if self.data is None:
                return httpx.Response(404, json={"kind": "Status"})
            return httpx.Response(200, json=self._object())
        body = json.loads(request.content)
        if request.method == "POST":
            if self.data is not None:
                return httpx.Response(409, json={"reason": "AlreadyExists"})
            self.data = body["data"]
            return httpx.Response(201, json=self._object())
        if body["metadata"].get("resourceVersion") != str(self.version):
            return httpx.Response(409, json={"reason": "Conflict"})
        self.version += 1
        self.data = body["data"]
        return httpx.Response(200, json=self._object())

    def _object(self) -> dict[str, object]:
        return {"metadata": {"name": "c", "resourceVersion": str(self.version)}, "data": self.data}


def _counter(tmp_path: Path, server: FakeApiServer, deadline_s: float = 5) -> KubernetesVersionCounter:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    return KubernetesVersionCounter(
        "https://k", "ns", "c", token, False, deadline_s=deadline_s, transport=httpx.MockTransport(server)
    )


def test_the_first_number_creates_the_config_map_and_the_next_ones_compare_and_swap(tmp_path: Path) -> None:
    server = FakeApiServer()
    counter = _counter(tmp_path, server)
    assert counter.check() == 0
    assert [counter.reserve(1), counter.reserve(1), counter.reserve(10), counter.reserve(1)] == [1, 2, 10, 11]
    assert server.data == {"last_version": "11"} and counter.check() == 11


def test_a_writer_in_between_a_busy_server_or_a_deleted_map_means_read_again(tmp_path: Path) -> None:
    server = FakeApiServer(count=4, script=[200, 409])  # read (a stale answer), then someone else's write wins
    counter = _counter(tmp_path, server)
    assert counter.reserve(1) == 5
    assert server.calls == ["GET", "PUT", "GET", "PUT"]
    server.script = [503, 429]
    assert counter.check() == 5
    server.script = [200, 404]  # read, then deleted before the update: read again (and create it anew)
    server.data = None
    assert counter.reserve(1) == 1


def test_a_server_that_stays_away_fails_the_run_naming_the_config_map(tmp_path: Path) -> None:
    server = FakeApiServer(count=4, script=[503] * 1000)
    with pytest.raises(VersionCounterError, match=r"ConfigMap ns/c: could not read the count after \d+ attempts"):
        _counter(tmp_path, server, deadline_s=0.5).check()
    server.script = [403]
    with pytest.raises(VersionCounterError, match=r"ConfigMap ns/c: the API server refused to read it \(HTTP 403\)"):
        _counter(tmp_path, server).reserve(1)
