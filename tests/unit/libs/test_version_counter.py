"""MODEL_VERSION_COUNTER's setting and what the counter refuses before it talks to anyone; the counter itself
against the real API server is tests/cluster/test_version_counter.py."""

from __future__ import annotations

from pathlib import Path

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
    with pytest.raises(VersionCounterError, match=r"ConfigMap ns/c: no model version number after \d+ attempts"):
        counter.reserve(1)
