"""Row keys: newest-first per user, grouped by user, spread over salt buckets."""

from __future__ import annotations

from scalerec_storage import schema as s


def test_interaction_keys_sort_newest_first_within_a_user() -> None:
    keys = [s.interaction_key("u1", ts, f"e{ts}") for ts in (1_000, 5_000, 3_000)]
    assert sorted(keys) == [keys[1], keys[2], keys[0]]
    assert all(k.startswith(s.user_prefix("u1")) for k in keys)


def test_example_keys_sort_oldest_first_within_a_user() -> None:
    keys = [s.example_key("u1", ts, "e") for ts in (5, 1, 3)]
    assert sorted(keys) == [keys[1], keys[2], keys[0]]


def test_user_prefix_does_not_match_a_longer_user_id() -> None:
    assert not s.interaction_key("u10", 1, "e").startswith(s.user_prefix("u1"))


def test_salts_spread_ids_over_all_buckets() -> None:
    salts = {s.salt(f"user-{i}") for i in range(1000)}
    assert len(salts) == s.SALT_BUCKETS


def test_every_table_is_declared_once() -> None:
    names = [t.name for t in s.tables()]
    assert len(names) == len(set(names))
