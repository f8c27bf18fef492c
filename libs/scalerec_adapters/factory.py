"""Build a backend from its URL, so production and embedded differ by configuration only.

| URL                                   | backend                              |
|---------------------------------------|--------------------------------------|
| ``sqlite:///abs/path/bus.db``         | embedded durable log (event bus)     |
| ``kafka://host:9092,host2:9092``      | Apache Kafka (aiokafka)              |
| ``sqlite:///abs/path/store.db``       | embedded wide-column store           |
| ``hbase://host:9090?pool=8``          | HBase through its Thrift server      |
| ``memory://?max_items=100000``        | in-process TTL/LRU cache             |
| ``memcached://h1:11211,h2:11211``     | Memcached, consistent hashing        |
| ``onnxruntime://``                    | in-process onnxruntime               |
| ``triton://host:8001``                | NVIDIA Triton over gRPC (every       |
|                                       | address the name resolves to, or     |
|                                       | ``triton://ip:8001,ip:8001``)        |

Implementations are imported lazily: the collector never imports onnxruntime,
an embedded deployment never imports aiokafka.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from scalerec_adapters.bus import EventBus
from scalerec_adapters.cache import Cache
from scalerec_adapters.scoring import Scorer
from scalerec_adapters.store import WideColumnStore


class UnsupportedBackend(ValueError):
    pass


def _query(url: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlparse(url).query).items()}


def _sqlite_path(url: str) -> Path:
    parsed = urlparse(url)
    path = Path(parsed.path if not parsed.netloc else parsed.netloc + parsed.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _hosts(url: str, default_port: int) -> list[tuple[str, int]]:
    netloc = urlparse(url).netloc
    out = []
    for part in netloc.split(","):
        if part.startswith("["):  # [IPv6]:port
            host, _, rest = part[1:].partition("]")
            port = rest.lstrip(":")
        else:
            host, _, port = part.partition(":")
        out.append((host or "127.0.0.1", int(port) if port else default_port))
    return out


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def triton_replica_urls(url: str) -> list[str]:
    """``triton://name:8001?opts`` as one URL per Triton replica: every address each host resolves to now
    (a headless Service's name gives each ready pod), each with the same options; sorted, no repeats.
    Blocking (DNS): call it from a thread."""
    import socket

    query = urlparse(url).query
    addresses: set[str] = set()
    for host, port in _hosts(url, 8001):
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        # One address per server: a dual-stack name (localhost, a dual-stack cluster's Service) gives each
        # pod an IPv4 and an IPv6 address; the IPv4 ones are taken when there are any.
        family = socket.AF_INET if any(f == socket.AF_INET for f, *_ in found) else socket.AF_INET6
        addresses |= {_address(str(sockaddr[0]), port) for f, *_, sockaddr in found if f == family}
    return [f"triton://{a}" + (f"?{query}" if query else "") for a in sorted(addresses)]


def make_bus(
    url: str, *, partitions: int = 4, client_id: str = "scalerec", kafka_options: Mapping[str, Any] | None = None
) -> EventBus:
    """The bus ``url`` names; ``kafka_options`` secure a Kafka bus's connections (``ServiceSettings.
    kafka_client_options()``: TLS, SASL), and are ignored by the embedded one."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        from scalerec_adapters.embedded.sqlite_bus import SqliteEventBus

        return SqliteEventBus(_sqlite_path(url), default_partitions=partitions)
    if scheme == "kafka":
        from scalerec_adapters.kafka_bus import KafkaEventBus

        servers = ",".join(f"{h}:{p}" for h, p in _hosts(url, 9092))
        return KafkaEventBus(
            servers, default_partitions=partitions, client_id=client_id, client_options=kafka_options, **_query(url)
        )
    raise UnsupportedBackend(f"BUS_URL scheme {scheme!r} is not one of sqlite, kafka")


def make_store(url: str, *, namespace: str = "scalerec") -> WideColumnStore:
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        from scalerec_adapters.embedded.sqlite_store import SqliteStore

        return SqliteStore(_sqlite_path(url), namespace=namespace)
    if scheme == "hbase":
        from scalerec_adapters.hbase_store import HBaseStore

        (host, port), *_ = _hosts(url, 9090)
        q = _query(url)
        return HBaseStore(
            host,
            port,
            namespace=namespace,
            pool_size=int(q.get("pool", "8")),
            timeout_ms=int(q.get("timeout_ms", "15000")),
        )
    raise UnsupportedBackend(f"STORE_URL scheme {scheme!r} is not one of sqlite, hbase")


def make_cache(url: str) -> Cache:
    scheme = urlparse(url).scheme
    if scheme == "memory":
        from scalerec_adapters.embedded.memory_cache import MemoryCache

        return MemoryCache(max_items=int(_query(url).get("max_items", "100000")))
    if scheme == "memcached":
        from scalerec_adapters.memcached_cache import MemcachedCache

        return MemcachedCache(_hosts(url, 11211))
    raise UnsupportedBackend(f"CACHE_URL scheme {scheme!r} is not one of memory, memcached")


def make_scorer(url: str, *, repository: Path, **triton_options: str) -> Scorer:
    """The scorer ``url`` names; ``triton_options`` override the URL's query (``control="false"``: a follower)."""
    scheme = urlparse(url).scheme
    if scheme == "onnxruntime":
        from scalerec_adapters.embedded.onnx_scorer import OnnxRuntimeScorer

        # onnxruntime://?inline=1&threads=1&max_batch_rows=32 (see OnnxRuntimeScorer)
        q = _query(url)
        return OnnxRuntimeScorer(
            repository,
            intra_op_threads=int(q.get("threads", 1)),
            max_batch_rows=int(q.get("max_batch_rows", 32)),
            inline=q.get("inline", "0").lower() in ("1", "true", "yes"),
        )
    if scheme == "triton":
        from scalerec_adapters.triton_scorer import TritonScorer

        # One name (resolving to every replica, balanced per request) or a list of IP addresses.
        addresses = ",".join(_address(h, p) for h, p in _hosts(url, 8001))
        return TritonScorer(addresses, repository=repository, **{**_query(url), **triton_options})
    raise UnsupportedBackend(f"SCORER_URL scheme {scheme!r} is not one of onnxruntime, triton")
