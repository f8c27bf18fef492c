"""Ids never in clear in log lines or errors: users and storage/bus keys by a keyed hash."""

from __future__ import annotations

from scalerec_adapters.hbase_store import _server_summary
from scalerec_core.logging import key_ref, user_ref


def test_keys_and_users_get_the_same_keyed_hash_kind_apart() -> None:
    assert key_ref(b"b3|alice", "k1") == key_ref(b"b3|alice", "k1") != key_ref(b"b3|alice", "k2")
    assert key_ref(b"alice", "k1").startswith("k:") and user_ref("alice", "k1").startswith("u:")
    assert key_ref(b"alice", "k1")[2:] == user_ref("alice", "k1")[2:]  # one HMAC: an operator can join them


def test_hbase_messages_keep_the_reason_and_lose_every_row_key() -> None:
    row = b"b3|alice|\x00\x01"
    stack = "\n\tat org.apache.hadoop.hbase.regionserver.HRegion.get(HRegion.java:1)"
    cases = {
        # The call's own row, as HBase prints bytes (Bytes.toStringBinary).
        "org.apache.hadoop.hbase.DoNotRetryIOException: bad row b3|alice|\\x00\\x01 here" + stack: "alice",
        # A region name carries the region's first row key: someone else's id.
        "org.apache.hadoop.hbase.NotServingRegionException: Region ns_interactions,b7|bob|99,"
        "1733300000000.5f1e0a. is not online on rs1,16020,1": "bob",
        "java.io.IOException: Timed out on row 'b1|carol|x' after 3 tries": "carol",
        "java.io.IOException: rowkey=b1|dave failed": "dave",
    }
    for message, user in cases.items():
        summary = _server_summary(message, [row])
        assert user not in summary and "\tat " not in summary, summary
        assert "Exception" in summary, summary  # the reason an operator needs stays
    assert key_ref(row) in _server_summary(next(iter(cases)), [row])
    assert "is not online" in _server_summary(list(cases)[1])
