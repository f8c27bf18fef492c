"""Topics as the deployed services would create them: every service of the prod-gpu release gets
the same BUS_URL from the API server, and the bus it opens creates each topic with the replication
factor and min.insync.replicas the example asks for (three brokers: 3 and 2)."""

from __future__ import annotations

from scalerec_adapters.factory import make_bus
from scalerec_preprocessor.config import PreprocessorSettings

from tests.cluster.kube import Release, deployment_env

SERVICES = ("collector", "preprocessor", "trainer", "ranker", "evaluator")


def test_prod_topics_come_out_replicated(prod: Release) -> None:
    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in prod.deployments()}
    urls = {name: deployment_env(deployments[name])["BUS_URL"] for name in SERVICES}
    assert len(set(urls.values())) == 1, f"every service creates topics alike: {urls}"
    settings = PreprocessorSettings(**{k.lower(): v for k, v in deployment_env(deployments["preprocessor"]).items()})
    bus = make_bus(settings.bus_url, partitions=settings.topic_partitions, client_id="cluster-test")
    topics = bus.new_topics(settings.topics())
    assert {t.name for t in topics} == {s.name for s in settings.topics()}
    assert all(t.name.startswith("prod.") for t in topics), "topics follow DEPLOYMENT"
    for t in topics:
        assert t.replication_factor == 3, t.name
        assert t.topic_configs["min.insync.replicas"] == "2", t.name
    assert {t.num_partitions for t in topics if t.name == "prod.events.raw.v1"} == {24}
