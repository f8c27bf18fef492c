"""Kafka authentication and encryption: every pod that gets BUS_URL (the services' Deployments and the
training Job/CronJob) gets KAFKA_SECURITY_PROTOCOL, the SASL credentials from a Secret (never a plain
value) and the TLS Secret mounted read-only with KAFKA_SSL_* naming its files; configurations that
could not connect fail at render time, naming the value to fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.helm import RELEASE, Rendered, pod_spec, render, rendered, run_helm, template_args

SERVICES = ("collector", "preprocessor", "trainer", "ranker", "evaluator")
TLS_DIR = "/etc/scalerec/kafka-tls"
BACKENDS: dict[str, Any] = {
    "kafka": {"bootstrap": "k1:9093,k2:9093"},
    "hbase": {"thrift": "hb:9090"},
    "persistence": {"data": {"shared": False}},
    # Both kinds of training workload, so they are checked like the Deployments; Triton, which must not.
    "components": {
        "trainer": {"training": {"job": {"enabled": True}, "cronJob": {"enabled": True}}},
        "triton": {"enabled": True},
    },
}
SASL_SSL: dict[str, Any] = {"securityProtocol": "SASL_SSL", "sasl": {"existingSecret": "kafka-user"}}
# Every workload that runs a ScaleRec service, and so talks to Kafka, with BACKENDS.
KAFKA_WORKLOADS = {
    *(f"Deployment/{RELEASE}-{s}" for s in SERVICES),
    f"Job/{RELEASE}-trainer-train-1",
    f"CronJob/{RELEASE}-trainer-retrain",
}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _values_file(tmp_path: Path, kafka: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(_merge(_merge(BACKENDS, {"kafka": kafka}), extra or {})))
    return path


def _render(tmp_path: Path, kafka: dict[str, Any], extra: dict[str, Any] | None = None) -> Rendered:
    return render(["-f", str(_values_file(tmp_path, kafka, extra))])


def _pods(r: Rendered) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(kind/name, pod spec, first container) of every workload."""
    out = []
    for obj in r.objects:
        spec = pod_spec(obj)
        if spec is not None:
            out.append((f"{obj['kind']}/{obj['metadata']['name']}", spec, spec["containers"][0]))
    return out


def _kafka_pods(r: Rendered) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """The workloads whose container gets BUS_URL; asserts they are all of KAFKA_WORKLOADS."""
    pods = [p for p in _pods(r) if any(e["name"] == "BUS_URL" for e in p[2].get("env", []))]
    assert {w for w, _, _ in pods} == KAFKA_WORKLOADS, r.scenario
    return pods


def _env(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = [e["name"] for e in c.get("env", [])]
    assert len(names) == len(set(names)), f"an env name twice: {names}"
    return {e["name"]: e for e in c.get("env", [])}


def _kafka_env(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in _env(c).items() if k.startswith("KAFKA_")}


def _tls_volume(spec: dict[str, Any]) -> dict[str, Any] | None:
    return next((v for v in spec.get("volumes", []) if v["name"] == "kafka-tls"), None)


def _secret_ref(e: dict[str, Any]) -> tuple[str, str]:
    assert "value" not in e, f"{e['name']} must come from a Secret, not a plain value"
    ref = e["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def test_without_kafka_no_pod_gets_kafka_security_env() -> None:
    for scenario in ("defaults", "dev"):
        for workload, spec, c in _pods(rendered(scenario)):
            assert not _kafka_env(c), f"{scenario}: {workload}"
            assert _tls_volume(spec) is None, f"{scenario}: {workload}"


def test_by_default_kafka_is_plaintext_without_credentials(tmp_path: Path) -> None:
    plain = _render(tmp_path, {})
    _kafka_pods(plain)  # the Deployments, the Job and the CronJob all get BUS_URL
    for r in (plain, rendered("prod-gpu")):
        for workload, spec, c in _pods(r):
            env = _kafka_env(c)
            if "BUS_URL" not in _env(c):  # Triton, Locust: they never talk to Kafka
                assert not env, f"{r.scenario}: {workload}"
                continue
            assert {k: e.get("value") for k, e in env.items()} == {"KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}, workload
            assert _tls_volume(spec) is None and not any(m["name"] == "kafka-tls" for m in c["volumeMounts"])


@pytest.mark.parametrize(("protocol", "mechanism"), [("SASL_SSL", "SCRAM-SHA-256"), ("SASL_PLAINTEXT", "PLAIN")])
def test_sasl_credentials_come_from_the_secret_in_every_pod_that_talks_to_kafka(
    tmp_path: Path, protocol: str, mechanism: str
) -> None:
    kafka = {
        "securityProtocol": protocol,
        "sasl": {"mechanism": mechanism, "existingSecret": "kafka-user", "usernameKey": "user", "passwordKey": "pw"},
    }
    r = _render(tmp_path, kafka)
    for workload, spec, c in _kafka_pods(r):
        env = _kafka_env(c)
        assert set(env) == {
            "KAFKA_SECURITY_PROTOCOL",
            "KAFKA_SASL_MECHANISM",
            "KAFKA_SASL_USERNAME",
            "KAFKA_SASL_PASSWORD",
        }, workload
        assert env["KAFKA_SECURITY_PROTOCOL"]["value"] == protocol
        assert env["KAFKA_SASL_MECHANISM"]["value"] == mechanism
        assert _secret_ref(env["KAFKA_SASL_USERNAME"]) == ("kafka-user", "user"), workload
        assert _secret_ref(env["KAFKA_SASL_PASSWORD"]) == ("kafka-user", "pw"), workload
        assert _tls_volume(spec) is None, f"{workload}: no TLS Secret asked for"
    triton = r.get("Deployment", f"{RELEASE}-triton")
    assert not _kafka_env(triton["spec"]["template"]["spec"]["containers"][0])


@pytest.mark.parametrize(
    ("tls", "files"),
    [
        # A private CA, mutual TLS (a kubernetes.io/tls Secret plus the CA).
        (
            {"certKey": "tls.crt", "keyKey": "tls.key"},
            {"KAFKA_SSL_CAFILE": "ca.crt", "KAFKA_SSL_CERTFILE": "tls.crt", "KAFKA_SSL_KEYFILE": "tls.key"},
        ),
        ({}, {"KAFKA_SSL_CAFILE": "ca.crt"}),  # a private CA, no client certificate
        # Brokers with a public CA's certificates: the system's CAs, only the client certificate mounted.
        (
            {"caKey": "", "certKey": "client.pem", "keyKey": "client-key.pem"},
            {"KAFKA_SSL_CERTFILE": "client.pem", "KAFKA_SSL_KEYFILE": "client-key.pem"},
        ),
    ],
    ids=["mtls", "ca-only", "public-ca-mtls"],
)
@pytest.mark.parametrize("sasl", [False, True], ids=["ssl", "sasl-ssl"])
def test_the_tls_secret_is_mounted_read_only_where_the_file_env_points(
    tmp_path: Path, tls: dict[str, Any], files: dict[str, str], sasl: bool
) -> None:
    kafka = _merge(SASL_SSL if sasl else {"securityProtocol": "SSL"}, {"tls": {"existingSecret": "kafka-tls", **tls}})
    r = _render(tmp_path, kafka)
    for workload, spec, c in _kafka_pods(r):
        env = _kafka_env(c)
        assert env["KAFKA_SECURITY_PROTOCOL"]["value"] == ("SASL_SSL" if sasl else "SSL")
        assert ("KAFKA_SASL_PASSWORD" in env) is sasl, workload
        volume = _tls_volume(spec)
        assert volume is not None, f"{workload}: no kafka-tls volume"
        assert volume["secret"]["secretName"] == "kafka-tls"
        items = {i["key"]: i["path"] for i in volume["secret"]["items"]}
        assert items == {k: k for k in files.values()}, f"{workload}: only the keys named are projected"
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == "kafka-tls"]
        assert mount == {"name": "kafka-tls", "mountPath": TLS_DIR, "readOnly": True}, workload
        ssl_env = {k: e["value"] for k, e in env.items() if k.startswith("KAFKA_SSL_")}
        assert ssl_env == {k: f"{TLS_DIR}/{key}" for k, key in files.items()}, workload
        for path in ssl_env.values():  # each file is one the mount really holds
            assert path.removeprefix(f"{mount['mountPath']}/") in items.values(), (workload, path)
        # The model-sync sidecar and other init containers never get the client's key.
        for init in spec.get("initContainers", []):
            assert not any(m["name"] == "kafka-tls" for m in init.get("volumeMounts", [])), workload
    triton = r.get("Deployment", f"{RELEASE}-triton")["spec"]["template"]["spec"]
    assert _tls_volume(triton) is None, "Triton never talks to Kafka"


def test_an_encrypted_client_keys_passphrase_is_a_secret_ref_never_a_mounted_file(tmp_path: Path) -> None:
    tls = {"existingSecret": "kafka-tls", "certKey": "tls.crt", "keyKey": "tls.key", "keyPasswordKey": "passphrase"}
    r = _render(tmp_path, {"securityProtocol": "SSL", "tls": tls})
    for workload, spec, c in _kafka_pods(r):
        env = _kafka_env(c)
        assert _secret_ref(env["KAFKA_SSL_KEY_PASSWORD"]) == ("kafka-tls", "passphrase"), workload
        assert env["KAFKA_SSL_KEYFILE"]["value"] == f"{TLS_DIR}/tls.key", workload
        volume = _tls_volume(spec)
        assert volume is not None and "passphrase" not in {i["key"] for i in volume["secret"]["items"]}, workload
    triton = r.get("Deployment", f"{RELEASE}-triton")["spec"]["template"]["spec"]["containers"][0]
    assert "KAFKA_SSL_KEY_PASSWORD" not in _kafka_env(triton)


def test_user_env_still_overrides_what_the_chart_generates(tmp_path: Path) -> None:
    """env (default.env, components.<name>.env) wins over the generated values and replaces a
    secretKeyRef; extraEnv may bring one of its own. Each name is rendered once."""
    extra = {
        "default": {"env": {"KAFKA_SASL_MECHANISM": "PLAIN"}},
        "components": {
            "ranker": {
                "env": {"KAFKA_SASL_USERNAME": "ranker-{{ .Release.Namespace }}", "KAFKA_SSL_CAFILE": "/etc/ssl/ca.pem"}
            },
            "collector": {
                "extraEnv": [
                    {"name": "KAFKA_SASL_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "vault-kafka", "key": "pw"}}}
                ]
            },
        },
    }
    kafka = _merge(SASL_SSL, {"tls": {"existingSecret": "kafka-tls"}})
    r = _render(tmp_path, kafka, extra)
    for workload, _, c in _kafka_pods(r):
        env = _kafka_env(c)  # asserts each name once
        assert env["KAFKA_SASL_MECHANISM"]["value"] == "PLAIN", workload
        if workload == f"Deployment/{RELEASE}-ranker":
            assert env["KAFKA_SASL_USERNAME"] == {"name": "KAFKA_SASL_USERNAME", "value": "ranker-recs"}
            assert env["KAFKA_SSL_CAFILE"]["value"] == "/etc/ssl/ca.pem"
        else:
            assert _secret_ref(env["KAFKA_SASL_USERNAME"]) == ("kafka-user", "username"), workload
            assert env["KAFKA_SSL_CAFILE"]["value"] == f"{TLS_DIR}/ca.crt", workload
        expected_password = ("vault-kafka", "pw") if workload.endswith("-collector") else ("kafka-user", "password")
        assert _secret_ref(env["KAFKA_SASL_PASSWORD"]) == expected_password, workload


def test_the_everything_scenario_exercises_sasl_and_mutual_tls() -> None:
    """values-everything.yaml turns on SASL_SSL and mutual TLS, so the scenario tests (Kubernetes'
    schemas, env names against the settings classes) see the volume and every KAFKA_* name."""
    for workload, spec, c in _pods(rendered("everything")):
        if "BUS_URL" in _env(c):
            assert {
                "KAFKA_SASL_USERNAME",
                "KAFKA_SASL_PASSWORD",
                "KAFKA_SSL_CAFILE",
                "KAFKA_SSL_CERTFILE",
                "KAFKA_SSL_KEYFILE",
            } <= set(_kafka_env(c)), workload
            assert _tls_volume(spec) is not None, workload


@pytest.mark.parametrize(
    ("kafka", "messages"),
    [
        ({"securityProtocol": "TLS"}, ["/kafka/securityProtocol", "SASL_SSL"]),
        ({"sasl": {"mechanism": "GSSAPI"}}, ["/kafka/sasl/mechanism", "SCRAM-SHA-512"]),
        ({"sasl": {"user": "x"}}, ["additional properties", "/kafka/sasl"]),
        ({"securityProtocol": "SASL_SSL"}, ["kafka.securityProtocol=SASL_SSL needs kafka.sasl.existingSecret"]),
        ({"securityProtocol": "SASL_PLAINTEXT"}, ["needs kafka.sasl.existingSecret"]),
        ({"tls": {"existingSecret": "kafka-tls"}}, ["kafka.tls.existingSecret", "PLAINTEXT does not use TLS"]),
        (
            {"securityProtocol": "SASL_PLAINTEXT", "sasl": {"existingSecret": "u"}, "tls": {"existingSecret": "t"}},
            ["kafka.tls.existingSecret", "SASL_PLAINTEXT does not use TLS"],
        ),
        (
            {"securityProtocol": "SSL", "tls": {"existingSecret": "t", "certKey": "tls.crt"}},
            ["kafka.tls.certKey", "kafka.tls.keyKey", "both or neither"],
        ),
        (
            {"securityProtocol": "SSL", "tls": {"existingSecret": "t", "keyKey": "tls.key"}},
            ["kafka.tls.certKey", "kafka.tls.keyKey", "both or neither"],
        ),
        (
            {"securityProtocol": "SSL", "tls": {"certKey": "tls.crt", "keyKey": "tls.key"}},
            ["kafka.tls.existingSecret, which is empty"],
        ),
        (
            {"securityProtocol": "SSL", "tls": {"existingSecret": "t", "caKey": ""}},
            ["kafka.tls.existingSecret is set", "nothing of it to mount"],
        ),
        (
            {"securityProtocol": "SSL", "tls": {"existingSecret": "t", "keyPasswordKey": "pass"}},
            ["kafka.tls.keyPasswordKey", "kafka.tls.keyKey is empty"],
        ),
    ],
    ids=[
        "protocol-enum",
        "mechanism-enum",
        "sasl-typo",
        "sasl-ssl-without-secret",
        "sasl-plaintext-without-secret",
        "tls-secret-with-plaintext",
        "tls-secret-with-sasl-plaintext",
        "cert-without-key",
        "key-without-cert",
        "client-cert-without-secret",
        "tls-secret-with-no-key",
        "key-password-without-key",
    ],
)
def test_kafka_security_that_could_not_connect_does_not_render(
    tmp_path: Path, kafka: dict[str, Any], messages: list[str]
) -> None:
    proc = run_helm(template_args(["-f", str(_values_file(tmp_path, kafka))]), check=False)
    assert proc.returncode != 0, f"{kafka} rendered"
    for message in messages:
        assert message in proc.stderr, proc.stderr


def test_the_services_build_their_kafka_client_from_what_the_chart_renders(tmp_path: Path) -> None:
    """The rendered env, with the Secret's values where the pod would have them, is a Kafka security
    configuration the services' own settings accept (ServiceSettings.kafka_client_options)."""
    from scalerec_core.settings import ServiceSettings

    from tests.charts.test_settings_env import settings_class

    def build(service: str, env: dict[str, Any]) -> ServiceSettings:
        settings = settings_class(service)(**{k.lower(): v for k, v in env.items()})
        assert isinstance(settings, ServiceSettings)
        return settings

    kafka = {"securityProtocol": "SASL_PLAINTEXT", "sasl": {"mechanism": "SCRAM-SHA-256", "existingSecret": "u"}}
    r = _render(tmp_path, kafka)
    secrets = {"KAFKA_SASL_USERNAME": "scalerec", "KAFKA_SASL_PASSWORD": "s3cret"}
    for workload, _, c in _kafka_pods(r):
        env = {k: e["value"] for k, e in _env(c).items() if "value" in e and k not in ("JOB_NAME", "NODE_RANK")}
        options = build(c["name"], {**env, **secrets}).kafka_client_options()
        assert options["security_protocol"] == "SASL_PLAINTEXT" and options["sasl_mechanism"] == "SCRAM-SHA-256"
        assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("scalerec", "s3cret"), workload
        # Without the Secret's values the service would refuse to start: they are not optional.
        with pytest.raises(ValueError, match="KAFKA_SASL_USERNAME"):
            build(c["name"], env).kafka_client_options()


def _keda(tmp_path: Path, kafka: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    values = {
        "kafka": {"bootstrap": "k:9092", **kafka},
        "hbase": {"thrift": "hb:9090"},
        "persistence": {"data": {"shared": False}},
        "components": {"preprocessor": {"keda": {"enabled": True}}},
    }
    path = tmp_path / "keda.yaml"
    path.write_text(yaml.safe_dump(values))
    r = render(["-f", str(path)])
    (so,) = r.of_kind("ScaledObject")
    (trigger,) = so["spec"]["triggers"]
    return trigger, r.of_kind("TriggerAuthentication")


def test_keda_reads_the_lag_with_the_services_kafka_credentials_and_certificates(tmp_path: Path) -> None:
    """KEDA connects to the brokers itself: its kafka trigger gets the same SASL mechanism, TLS and Secrets."""
    trigger, auths = _keda(
        tmp_path,
        {
            "securityProtocol": "SASL_SSL",
            "sasl": {"mechanism": "SCRAM-SHA-256", "existingSecret": "k-user", "usernameKey": "u", "passwordKey": "p"},
            "tls": {
                "existingSecret": "k-tls",
                "caKey": "ca.pem",
                "certKey": "c.pem",
                "keyKey": "k.pem",
                "keyPasswordKey": "k.pass",
            },
        },
    )
    assert trigger["metadata"]["sasl"] == "scram_sha256" and trigger["metadata"]["tls"] == "enable"
    (auth,) = auths
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert {(t["parameter"], t["name"], t["key"]) for t in auth["spec"]["secretTargetRef"]} == {
        ("username", "k-user", "u"),
        ("password", "k-user", "p"),
        ("ca", "k-tls", "ca.pem"),
        ("cert", "k-tls", "c.pem"),
        ("key", "k-tls", "k.pem"),
        ("keyPassword", "k-tls", "k.pass"),
    }


@pytest.mark.parametrize(
    ("kafka", "metadata", "params"),
    [
        ({}, {}, None),  # plain text: nothing added, no TriggerAuthentication
        ({"securityProtocol": "SSL"}, {"tls": "enable"}, None),  # public CA: TLS on, nothing to authenticate with
        (
            {"securityProtocol": "SASL_PLAINTEXT", "sasl": {"mechanism": "PLAIN", "existingSecret": "s"}},
            {"sasl": "plaintext"},
            {"username", "password"},
        ),
        ({"securityProtocol": "SSL", "tls": {"existingSecret": "t"}}, {"tls": "enable"}, {"ca"}),
    ],
    ids=["plaintext", "ssl-public-ca", "sasl-plaintext", "ssl-private-ca"],
)
def test_keda_gets_only_what_the_protocol_uses(
    tmp_path: Path, kafka: dict[str, Any], metadata: dict[str, str], params: set[str] | None
) -> None:
    trigger, auths = _keda(tmp_path, kafka)
    assert {k: v for k, v in trigger["metadata"].items() if k in ("sasl", "tls")} == metadata
    if params is None:
        assert not auths and "authenticationRef" not in trigger
    else:
        (auth,) = auths
        assert {t["parameter"] for t in auth["spec"]["secretTargetRef"]} == params
