"""The placement planner as a table: GPUs, occupants and waiting models in, decisions out.

Every case of issue 9's item 3 by name; the seeds' GPU boxes (000: 4 x L40S, 004: a 4 GB
GTX 1050 Ti) as scenarios. No I/O: `plan` is pure.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from supervisor.config import ModelConfig
from supervisor.gpus.inventory import Inventory
from supervisor.gpus.needs import resolve_need
from supervisor.gpus.placement import (
    Action,
    Demand,
    Occupant,
    Placement,
    Verdict,
    foreign_memory,
    never_fits,
    plan,
)
from supervisor.rules.table import State

GiB = 1 << 30
MiB = 1 << 20


def occ(model: str, gpus: Mapping[int, int | None], state: State = State.READY,
        **kw: object) -> Occupant:
    return Occupant(model, "default", gpus, state, **kw)  # type: ignore[arg-type]


def want(model: str, need: Mapping[int, int | None], since: float = 0.0) -> Demand:
    return Demand(model, "default", need, since)


def decide(gpus: Mapping[int, int], occupants: list[Occupant], demand: Demand,
           foreign: Mapping[int, int] | None = None) -> Placement:
    [decision] = plan(gpus, occupants, [demand], foreign)
    return decision


def evicted(decision: Placement) -> list[tuple[str, Action]]:
    return [(e.model, e.action) for e in decision.evictions]


ONE = {0: 10 * GiB}


# -- fits --------------------------------------------------------------------------


def test_fits_on_an_empty_gpu() -> None:
    d = decide(ONE, [], want("a", {0: 8 * GiB}))
    assert (d.kind, d.evictions) == (Verdict.START, ())


def test_fits_beside_a_running_model() -> None:
    assert decide(ONE, [occ("b", {0: 2 * GiB}, in_flight=3)],
                  want("a", {0: 8 * GiB})).kind is Verdict.START


def test_every_gpu_of_a_multi_gpu_need_must_fit() -> None:
    gpus = {0: 10 * GiB, 1: 10 * GiB}
    d = decide(gpus, [occ("b", {1: 4 * GiB}, in_flight=1)], want("a", {0: 8 * GiB, 1: 8 * GiB}))
    assert (d.kind, d.gpu, d.need, d.free) == (Verdict.WAIT, 1, 8 * GiB, 6 * GiB)


# -- evict ---------------------------------------------------------------------------


def test_an_idle_model_is_stopped_to_make_room() -> None:
    d = decide(ONE, [occ("b", {0: 4 * GiB})], want("a", {0: 8 * GiB}))
    assert d.kind is Verdict.EVICT and evicted(d) == [("b", Action.STOP)]
    assert d.evictions[0].frees == {0: 4 * GiB}


def test_asleep_models_go_before_the_least_recently_used() -> None:
    occupants = [
        occ("lru", {0: 3 * GiB}, last_used=1.0),
        occ("sleeper", {0: 3 * GiB}, State.ASLEEP, last_used=50.0),
        occ("recent", {0: 3 * GiB}, last_used=40.0),
    ]
    d = decide(ONE, occupants, want("a", {0: 4 * GiB}))
    assert evicted(d) == [("sleeper", Action.STOP)]


def test_least_recently_used_goes_first() -> None:
    occupants = [occ("recent", {0: 4 * GiB}, last_used=9.0),
                 occ("old", {0: 4 * GiB}, last_used=2.0)]
    d = decide(ONE, occupants, want("a", {0: 5 * GiB}))
    assert evicted(d) == [("old", Action.STOP)]


def test_as_many_are_evicted_as_needed_and_no_more() -> None:
    occupants = [occ(f"m{i}", {0: 3 * GiB}, last_used=float(i)) for i in range(3)]
    d = decide(ONE, occupants, want("a", {0: 7 * GiB}))
    assert evicted(d) == [("m0", Action.STOP), ("m1", Action.STOP)]


def test_only_models_on_the_needed_gpus_are_evicted() -> None:
    gpus = {0: 10 * GiB, 1: 10 * GiB}
    occupants = [occ("elsewhere", {1: 9 * GiB}, last_used=0.0),
                 occ("here", {0: 9 * GiB}, last_used=5.0)]
    assert evicted(decide(gpus, occupants, want("a", {0: 5 * GiB}))) == [("here", Action.STOP)]


def test_a_model_spanning_gpus_is_stopped_whole_and_frees_them_all() -> None:
    gpus = {0: 10 * GiB, 1: 10 * GiB}
    d = decide(gpus, [occ("tp2", {0: 8 * GiB, 1: 8 * GiB})], want("a", {1: 5 * GiB}))
    assert evicted(d) == [("tp2", Action.STOP)]
    assert d.evictions[0].frees == {0: 8 * GiB, 1: 8 * GiB}


@pytest.mark.parametrize(("occupant", "why"), [
    (occ("b", {0: 6 * GiB}, in_flight=1), "busy: 1 in flight"),
    (occ("b", {0: 6 * GiB}, held=2), "2 request(s) held"),
    (occ("b", {0: 6 * GiB}, pinned=True), "pinned"),
    (occ("b", {0: 6 * GiB}, past_min_residency=False), "inside min_residency"),
    (occ("b", {0: 6 * GiB}, State.STARTING), "loading"),
    (occ("b", {0: 6 * GiB}, State.WAKING), "loading"),
    (occ("b", {0: 6 * GiB}, State.ASLEEP, pinned=True), "pinned"),
], ids=["in-flight", "held", "pinned", "min-residency", "starting", "waking", "asleep-pinned"])
def test_never_evicted(occupant: Occupant, why: str) -> None:
    d = decide(ONE, [occupant], want("a", {0: 8 * GiB}))
    assert (d.kind, d.evictions) == (Verdict.WAIT, ())
    assert (d.gpu, d.need, d.free) == (0, 8 * GiB, 4 * GiB)
    assert f"b ({why}, 6 GiB)" in d.reason
    assert "'a' needs 8 GiB, 4 GiB free of 10 GiB" in d.reason


def test_nothing_is_evicted_when_even_every_evictable_one_would_not_be_enough() -> None:
    occupants = [occ("idle", {0: 2 * GiB}), occ("busy", {0: 6 * GiB}, in_flight=1)]
    d = decide(ONE, occupants, want("a", {0: 5 * GiB}))
    assert (d.kind, d.evictions) == (Verdict.WAIT, ())
    assert "idle (evictable, 2 GiB)" in d.reason and "busy (busy: 1 in flight, 6 GiB)" in d.reason


# -- sleep instead of stop -----------------------------------------------------------


def test_sleep_instead_of_stop_when_sleeping_frees_enough() -> None:
    sleeper = occ("b", {0: 8 * GiB}, asleep_gpus={0: 1 * GiB})
    d = decide(ONE, [sleeper], want("a", {0: 6 * GiB}))
    assert evicted(d) == [("b", Action.SLEEP)]
    assert d.evictions[0].frees == {0: 7 * GiB}


def test_stop_when_sleeping_would_not_free_enough() -> None:
    sleeper = occ("b", {0: 8 * GiB}, asleep_gpus={0: 3 * GiB})
    assert evicted(decide(ONE, [sleeper], want("a", {0: 9 * GiB}))) == [("b", Action.STOP)]


def test_an_asleep_model_in_the_way_is_stopped() -> None:
    d = decide(ONE, [occ("b", {0: 2 * GiB}, State.ASLEEP, asleep_gpus={0: 2 * GiB})],
               want("a", {0: 9 * GiB}))
    assert evicted(d) == [("b", Action.STOP)]


def test_a_model_going_to_sleep_releases_only_what_sleeping_frees() -> None:
    going = occ("b", {0: 8 * GiB}, State.SLEEPING, asleep_gpus={0: 1 * GiB})
    assert "being released" in decide(ONE, [going], want("a", {0: 8 * GiB})).reason
    assert "being released" not in decide(ONE, [going], want("a", {0: 19 * GiB // 2})).reason


# -- queue ---------------------------------------------------------------------------


def test_queued_until_the_occupant_goes_idle_then_evicted_then_started() -> None:
    need = want("a", {0: 8 * GiB}, since=1.0)
    busy = occ("b", {0: 6 * GiB}, in_flight=1)
    assert decide(ONE, [busy], need).kind is Verdict.WAIT
    idle = occ("b", {0: 6 * GiB})
    assert evicted(decide(ONE, [idle], need)) == [("b", Action.STOP)]
    # While it stops, its memory still counts: wait, and evict nobody else for it.
    stopping = occ("b", {0: 6 * GiB}, State.STOPPING)
    other = occ("c", {0: 2 * GiB}, last_used=0.0)
    d = decide(ONE, [stopping, other], need)
    assert (d.kind, d.evictions) == (Verdict.WAIT, ())
    assert "memory is being released" in d.reason
    assert decide(ONE, [other], need).kind is Verdict.START


def test_first_come_first_served_on_a_gpu() -> None:
    occupants = [occ("x", {0: 8 * GiB})]
    late = want("late", {0: 4 * GiB}, since=2.0)
    early = want("early", {0: 8 * GiB}, since=1.0)
    first, second = plan(ONE, occupants, [late, early])
    assert (first.model, first.kind, evicted(first)) == ("early", Verdict.EVICT,
                                                         [("x", Action.STOP)])
    assert (second.model, second.kind) == ("late", Verdict.WAIT)
    assert "behind 'early'" in second.reason


def test_no_starvation_a_later_smaller_model_does_not_evict_before_the_longest_waiting() -> None:
    occupants = [occ("busy", {0: 6 * GiB}, in_flight=1), occ("idle", {0: 3 * GiB})]
    big = want("big", {0: 8 * GiB}, since=1.0)
    small = want("small", {0: 2 * GiB}, since=2.0)
    d_big, d_small = plan(ONE, occupants, [small, big])
    assert (d_big.kind, d_big.evictions) == (Verdict.WAIT, ())
    assert (d_small.kind, d_small.evictions) == (Verdict.WAIT, ())  # would have evicted "idle"
    assert "behind 'big'" in d_small.reason


def test_a_smaller_later_model_starts_when_it_fits_without_evicting() -> None:
    occupants = [occ("busy", {0: 6 * GiB}, in_flight=1)]
    d_big, d_small = plan(ONE, occupants, [want("small", {0: 3 * GiB}, since=2.0),
                                           want("big", {0: 8 * GiB}, since=1.0)])
    assert (d_big.model, d_big.kind) == ("big", Verdict.WAIT)
    assert (d_small.model, d_small.kind) == ("small", Verdict.START)


def test_waiting_behind_one_gpu_blocks_the_others_of_a_set() -> None:
    gpus = {0: 10 * GiB, 1: 10 * GiB}
    occupants = [occ("busy0", {0: 6 * GiB}, in_flight=1), occ("idle1", {1: 6 * GiB})]
    first, second, third = plan(gpus, occupants, [
        want("on0", {0: 8 * GiB}, since=1.0),
        want("on01", {0: 8 * GiB, 1: 8 * GiB}, since=2.0),
        want("on1", {1: 8 * GiB}, since=3.0),
    ])
    assert [d.kind for d in (first, second, third)] == [Verdict.WAIT] * 3
    assert "behind 'on01'" in third.reason


def test_gpu_sets_that_do_not_overlap_are_independent() -> None:
    gpus = {0: 10 * GiB, 1: 10 * GiB}
    occupants = [occ("busy0", {0: 6 * GiB}, in_flight=1), occ("idle1", {1: 6 * GiB})]
    first, second = plan(gpus, occupants, [want("on0", {0: 8 * GiB}, since=1.0),
                                           want("on1", {1: 8 * GiB}, since=2.0)])
    assert (first.kind, second.kind) == (Verdict.WAIT, Verdict.EVICT)


def test_one_plan_never_gives_the_same_memory_twice() -> None:
    first, second = plan(ONE, [], [want("a", {0: 6 * GiB}, since=1.0),
                                   want("b", {0: 6 * GiB}, since=2.0)])
    assert (first.kind, second.kind) == (Verdict.START, Verdict.WAIT)


def test_freed_memory_is_claimed_by_the_earliest_waiter() -> None:
    stopping = occ("x", {0: 8 * GiB}, State.STOPPING)
    first, second = plan(ONE, [stopping, occ("idle", {0: 2 * GiB})],
                         [want("a", {0: 8 * GiB}, since=1.0), want("b", {0: 4 * GiB}, since=2.0)])
    assert (first.kind, "being released" in first.reason) == (Verdict.WAIT, True)
    assert (second.kind, second.evictions) == (Verdict.WAIT, ())


# -- refuse --------------------------------------------------------------------------


def test_refused_when_the_need_exceeds_the_gpu() -> None:
    d = decide(ONE, [], want("huge", {0: 12 * GiB}))
    assert (d.kind, d.gpu, d.need, d.free) == (Verdict.REFUSE, 0, 12 * GiB, 10 * GiB)
    assert d.reason == "model 'huge' needs 12 GiB on GPU 0, which has 10 GiB in all"


def test_refused_when_a_gpu_is_not_in_the_inventory() -> None:
    d = decide(ONE, [], want("a", {3: GiB}))
    assert d.kind is Verdict.REFUSE and "GPU 3, which is not among the GPUs (0)" in d.reason


def test_never_fits_is_the_same_rule_for_check_config() -> None:
    assert never_fits("a", {0: 10 * GiB}, ONE) is None
    assert never_fits("a", {0: None}, ONE) is None
    refused = never_fits("a", {0: 10 * GiB + 1}, ONE)
    assert refused is not None and refused.kind is Verdict.REFUSE


def test_a_refused_model_does_not_hold_up_the_queue() -> None:
    first, second = plan(ONE, [occ("x", {0: 8 * GiB})],
                         [want("huge", {0: 11 * GiB}, since=1.0), want("b", {0: 4 * GiB}, 2.0)])
    assert (first.kind, second.kind) == (Verdict.REFUSE, Verdict.EVICT)


# -- foreign memory ------------------------------------------------------------------


def test_memory_of_other_processes_counts_for_the_fit() -> None:
    d = decide(ONE, [], want("a", {0: 8 * GiB}), foreign={0: 3 * GiB})
    assert (d.kind, d.free) == (Verdict.WAIT, 7 * GiB)
    assert "other processes (3 GiB)" in d.reason


def test_memory_of_other_processes_is_never_a_reason_to_refuse() -> None:
    assert decide(ONE, [], want("a", {0: 10 * GiB}), foreign={0: 9 * GiB}).kind is Verdict.WAIT


def test_foreign_memory_is_what_nvml_sees_beyond_the_reservations() -> None:
    used = {0: 9 * GiB, 1: 1 * GiB, 7: GiB}
    got = foreign_memory(used, [{0: 6 * GiB}, {0: 1 * GiB, 1: 4 * GiB}], {0: 10 * GiB, 1: 10 * GiB})
    assert got == {0: 2 * GiB, 1: 0}


# -- unknown need: the whole GPU -----------------------------------------------------


def test_an_unknown_need_takes_the_gpu_whole() -> None:
    assert decide(ONE, [], want("a", {0: None}), foreign={0: GiB}).kind is Verdict.START
    d = decide(ONE, [occ("small", {0: GiB})], want("a", {0: None}))
    assert evicted(d) == [("small", Action.STOP)]


def test_nothing_fits_beside_a_model_of_unknown_size() -> None:
    d = decide(ONE, [occ("whole", {0: None}, in_flight=1)], want("a", {0: GiB}))
    assert (d.kind, d.free) == (Verdict.WAIT, 0)


def test_sleeping_beside_a_whole_gpu_need_is_not_enough() -> None:
    d = decide(ONE, [occ("b", {0: 4 * GiB}, asleep_gpus={0: 1 * GiB})], want("a", {0: None}))
    assert evicted(d) == [("b", Action.STOP)]


# -- the model's own memory ----------------------------------------------------------


def test_a_wake_grows_in_place() -> None:
    me = occ("a", {0: 2 * GiB}, State.ASLEEP)
    assert decide(ONE, [me], want("a", {0: 9 * GiB})).kind is Verdict.START
    d = decide(ONE, [me, occ("b", {0: 4 * GiB})], want("a", {0: 9 * GiB}))
    assert evicted(d) == [("b", Action.STOP)]


def test_a_swap_waits_for_its_old_profile_to_stop_and_evicts_nobody_for_it() -> None:
    old = Occupant("a", "short", {0: 6 * GiB}, State.DRAINING)
    d = decide(ONE, [old, occ("b", {0: 3 * GiB})], want("a", {0: 7 * GiB}))
    assert (d.kind, d.evictions) == (Verdict.WAIT, ())
    assert decide(ONE, [occ("b", {0: 3 * GiB})], want("a", {0: 7 * GiB})).kind is Verdict.START


# -- the seeds -----------------------------------------------------------------------


def test_seed_004_stt_and_tts_take_turns_on_a_4gb_gpu() -> None:
    gpu = {0: 4 * GiB}
    stt, tts = {0: int(3.1 * GiB)}, {0: 2 * GiB}
    assert decide(gpu, [], want("tts", tts)).kind is Verdict.START
    d = decide(gpu, [occ("stt", stt, last_used=5.0)], want("tts", tts))
    assert evicted(d) == [("stt", Action.STOP)]
    d = decide(gpu, [occ("stt", stt, in_flight=1)], want("tts", tts))
    assert d.kind is Verdict.WAIT and "'tts' needs 2 GiB, 0.9 GiB free of 4 GiB" in d.reason


SEED_000_GPU = 46068 * MiB  # an L40S as nvidia-smi reports it


def _audio(utilization: float) -> dict[str, object]:
    """The Step-Audio service as `docker compose config --format json` prints it."""
    return {
        "image": "vllm/vllm-openai:latest",
        "command": ["--model", "/models/Step-Audio-R1.1", "--tensor-parallel-size", "4",
                    "--max-model-len", "65536", "--gpu-memory-utilization", str(utilization)],
        "deploy": {"resources": {"reservations": {"devices": [
            {"capabilities": ["gpu"], "driver": "nvidia", "device_ids": ["0", "1", "2", "3"]},
        ]}}},
    }


def _seed_000_needs(utilization: float) -> tuple[dict[int, int | None], dict[int, int | None]]:
    inventory = Inventory({i: SEED_000_GPU for i in range(4)})
    audio = ModelConfig.model_validate({"service": "audio", "upstream": "http://x:1"})
    tts = ModelConfig.model_validate({"service": "tts", "upstream": "http://x:2",
                                      "gpus": [3], "vram": "6GiB"})
    a = resolve_need("audio", audio, "default", _audio(utilization), inventory)
    t = resolve_need("tts", tts, "default", {"image": "tts"}, inventory)
    return dict(a.per_gpu), dict(t.per_gpu)


def test_seed_000_a_4_gpu_model_at_85_percent_and_a_1_gpu_model_share_gpu_3() -> None:
    gpus = {i: SEED_000_GPU for i in range(4)}
    audio, tts = _seed_000_needs(0.85)
    assert audio == dict.fromkeys(range(4), -(-SEED_000_GPU * 85 // 100))
    both = plan(gpus, [], [want("audio", audio, 1.0), want("tts", tts, 2.0)])
    assert [d.kind for d in both] == [Verdict.START, Verdict.START]
    assert decide(gpus, [occ("audio", audio, in_flight=2)], want("tts", tts)).kind is Verdict.START


def test_seed_000_the_3h_profile_at_92_percent_needs_gpu_3_to_itself() -> None:
    gpus = {i: SEED_000_GPU for i in range(4)}
    audio, tts = _seed_000_needs(0.92)
    d = decide(gpus, [occ("tts", tts, last_used=3.0)], want("audio", audio))
    assert evicted(d) == [("tts", Action.STOP)]
    d = decide(gpus, [occ("tts", tts, in_flight=1)], want("audio", audio))
    assert (d.kind, d.gpu) == (Verdict.WAIT, 3)
