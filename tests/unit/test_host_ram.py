"""Host RAM for level-1 sleepers (gpus/host_ram.py): who goes to level 2 when another
model's level-1 sleep would not fit."""

from __future__ import annotations

from supervisor.gpus.host_ram import Room, Sleeper, make_room

GIB = 1 << 30


def test_a_sleep_that_fits_deepens_no_one() -> None:
    assert make_room([Sleeper("a", 8 * GIB, 1.0)], 4 * GIB, 6 * GIB) == Room(1)


def test_the_least_recently_used_sleepers_go_deeper_until_it_fits() -> None:
    sleepers = [Sleeper("recent", 8 * GIB, 30.0), Sleeper("old", 4 * GIB, 10.0),
                Sleeper("older", 4 * GIB, 5.0)]
    # 2 GiB free, 9 needed: "older" (+4) and "old" (+4) make 10.
    assert make_room(sleepers, 9 * GIB, 2 * GIB) == Room(1, ("older", "old"))


def test_when_even_all_of_them_would_not_do_the_newcomer_sleeps_at_level_2() -> None:
    sleepers = [Sleeper("a", 2 * GIB, 1.0)]
    assert make_room(sleepers, 64 * GIB, 1 * GIB) == Room(2)
    assert make_room([], 64 * GIB, 1 * GIB) == Room(2)
