"""Which standby copies a replica keeps (processors/live/standby.py): pure."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from taskstream.processors.live.standby import standby_partitions

HOSTS = ["http://a:1", "http://b:1", "http://c:1"]


def test_two_replicas_each_keep_the_others_partitions() -> None:
    owners = {0: HOSTS[0], 1: HOSTS[1], 2: HOSTS[0], 3: HOSTS[1]}
    assert standby_partitions(owners, HOSTS[0], 1) == {1, 3}
    assert standby_partitions(owners, HOSTS[1], 1) == {0, 2}


def test_no_copies_when_alone_or_when_none_are_asked_for() -> None:
    owners = {0: HOSTS[0], 1: HOSTS[0]}
    assert standby_partitions(owners, HOSTS[0], 1) == set()
    assert standby_partitions({0: HOSTS[0], 1: HOSTS[1]}, HOSTS[0], 0) == set()


@given(st.dictionaries(st.integers(0, 11), st.sampled_from(HOSTS), min_size=1),
       st.integers(1, 3))
def test_every_partition_has_its_copies_and_never_on_its_owner(
        owners: dict[int, str], copies: int) -> None:
    hosts = sorted(set(owners.values()))
    kept = {host: standby_partitions(owners, host, copies) for host in hosts}
    for partition, owner in owners.items():
        keepers = [host for host in hosts if partition in kept[host]]
        assert owner not in keepers
        assert len(keepers) == min(copies, len(hosts) - 1)
