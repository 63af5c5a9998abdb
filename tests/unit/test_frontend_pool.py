"""The worker pool: membership, load, placement of coding groups on distinct workers."""

from __future__ import annotations

from collections import Counter

from services.frontend.discovery import resolve, resolve_workers, write_targets
from services.frontend.pool import NO_MEMBER, Placement, Pool, place_in_pool, place_in_slots


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def names(n: int) -> list[str]:
    return [f"w{i:02d}:1" for i in range(n)]


def test_a_group_goes_to_k_plus_r_distinct_workers() -> None:
    pool = Pool(names(7))
    for group in range(20):
        placement = place_in_pool(pool, 4, 1, group)
        assert len(placement.data) == 4 and len(placement.parity) == 1
        assert len({*placement.data, *placement.parity}) == 5


def test_idle_pool_rotates_groups_over_every_worker() -> None:
    pool = Pool(names(10))
    firsts = Counter(place_in_pool(pool, 4, 1, group).data[0] for group in range(10))
    assert sorted(firsts) == names(10)  # each worker starts one group of ten


def test_the_least_loaded_workers_are_chosen() -> None:
    pool = Pool(names(6))
    for member in names(6)[:3]:
        pool.started(member)
    placement = place_in_pool(pool, 2, 1, group_id=0)
    assert set(placement.data + placement.parity) == set(names(6)[3:])
    for member in names(6)[:3]:
        pool.finished(member)
    assert all(pool.inflight(m) == 0 for m in names(6))


def test_groups_in_flight_spread_over_the_pool() -> None:
    """Groups placed while earlier ones are still in flight land on the idle workers."""
    pool = Pool(names(10))
    used: Counter[str] = Counter()
    for group in range(2):
        placement = place_in_pool(pool, 4, 1, group)
        for member in placement.data + placement.parity:
            pool.started(member)
            used[member] += 1
    assert set(used) == set(names(10)) and set(used.values()) == {1}


def test_a_failed_worker_is_avoided_until_its_suspicion_ends() -> None:
    clock = Clock()
    pool = Pool(names(6), suspect_s=5.0, clock=clock)
    pool.started("w00:1")
    pool.finished("w00:1", failed=True)
    for group in range(6):
        assert "w00:1" not in place_in_pool(pool, 4, 1, group).data
    clock.now = 6.0
    assert any("w00:1" in place_in_pool(pool, 4, 1, group).data for group in range(6))


def test_suspects_fill_in_when_too_few_healthy_workers_are_left() -> None:
    pool = Pool(names(5))
    for member in names(5)[:2]:
        pool.started(member)
        pool.finished(member, failed=True)
    placement = place_in_pool(pool, 4, 1, 0)
    assert len({*placement.data, *placement.parity}) == 5


def test_joined_worker_gets_the_next_group_and_a_departed_one_none() -> None:
    pool = Pool(names(5))
    for member in names(5):
        pool.started(member)  # every member busy with one batch
    joined, left = pool.update([*names(5)[1:], "new:1"])
    assert (joined, left) == (["new:1"], ["w00:1"])
    assert place_in_pool(pool, 1, 0, 0).data == ("new:1",)
    assert all("w00:1" not in place_in_pool(pool, 3, 1, g).data for g in range(5))


def test_a_small_pool_repeats_workers_and_an_empty_one_names_none() -> None:
    placement = place_in_pool(Pool(names(2)), 2, 1, 0)
    assert len(set(placement.data + placement.parity)) == 2
    assert place_in_pool(Pool(), 2, 1, 0) == Placement((NO_MEMBER, NO_MEMBER), (NO_MEMBER,))


def test_calls_that_name_no_rotation_take_turns() -> None:
    pool = Pool(["a", "b", "c"])
    assert [pool.choose(1)[0] for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_fixed_slots_rotate_by_group_and_resends_move_on() -> None:
    placement = place_in_slots(["a", "b", "c"], ["p"], group_id=1)
    assert placement.data == ("b", "c", "a") and placement.parity == ("p",)
    assert placement.data_worker(0, 0) == "b" and placement.data_worker(0, 1) == "c"


def test_targets_file_is_read_again_at_every_resolution(tmp_path) -> None:
    path = tmp_path / "workers.txt"
    write_targets(path, ["127.0.0.1:1", "127.0.0.1:2"])
    target = (f"file://{path}",)
    assert resolve(target) == ["127.0.0.1:1", "127.0.0.1:2"]
    path.write_text("# pool\n127.0.0.1:3  # joined\n\n")
    assert resolve(target) == ["127.0.0.1:3"]
    assert resolve_workers(("a:1", "b:2", "c:3"), 2) == ["a:1", "b:2"]
