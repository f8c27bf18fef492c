"""Backends behind small interfaces: event bus, wide-column store, hot-data cache, model scorer.

Each interface has a production implementation (Kafka, HBase, Memcached, Triton)
and an embedded one (SQLite log, SQLite store, in-process TTL/LRU, onnxruntime).
``scalerec_adapters.factory`` picks one from a URL, so swapping is configuration only.
"""
