"""The phase table and a start's record on real vLLM logs (tests/unit/data/vllm_logs/,
README there says where each came from)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest

from supervisor.anatomy.phases import HIT, MISS, Seen, has_table, read
from supervisor.anatomy.record import START, WAKE, StartRecord, StartRecords
from supervisor.anatomy.stamps import split_stamp

LOGS = Path(__file__).parent / "data" / "vllm_logs"
VLLM_STAMP = re.compile(r"(\d\d-\d\d \d\d:\d\d:\d\d)")  # vLLM's own: "01-23 15:49:07"


def stamped(line: str, last: float) -> float:
    """Docker's stamp where the line has one, else vLLM's (to the second), else the time
    of the line before (a progress bar)."""
    at, rest = split_stamp(line)
    if at is not None:
        return at
    found = VLLM_STAMP.search(rest)
    if found is None:
        return last
    return datetime.strptime("2026-" + found.group(1), "%Y-%m-%d %H:%M:%S").timestamp()


def replay(name: str, ready_after: float = 0.5) -> StartRecord:
    """A start that began with the log's first line and was healthy `ready_after` seconds
    after its last."""
    lines = (LOGS / name).read_text().splitlines()
    at = stamped(lines[0], 0.0)
    record = StartRecord("smollm2", "smol-2k", START, began=at)
    for line in lines:
        at = stamped(line, at)
        seen = read("vllm", line)
        if seen is not None:
            record.saw(seen, at)
    record.end(at + ready_after, ok=True)
    return record


def phases(record: StartRecord) -> list[str]:
    return list(record.seconds())


def between(name: str, first: str, then: str) -> float:
    """Seconds from the log's first line holding `first` to its first holding `then`."""
    lines = (LOGS / name).read_text().splitlines()
    stamp = {text: stamped(next(line for line in lines if text in line), 0.0)
             for text in (first, then)}
    return stamp[then] - stamp[first]


def test_cpu_eager_start_has_weights_kv_cache_api_and_no_compile() -> None:
    record = replay("cpu-0.32-eager.log")
    assert phases(record) == ["container", "weights", "kv_cache", "api", "healthy"]
    assert record.figures["weights"] == 1.70
    assert record.cache is None
    spans = record.seconds()
    assert spans["weights"] == pytest.approx(
        between("cpu-0.32-eager.log", "Starting to load model", "GiB for KV cache"))
    assert sum(spans.values()) == pytest.approx(record.total(now=0.0))


def test_cpu_compile_with_an_empty_cache_is_a_miss_and_takes_the_most_time() -> None:
    record = replay("cpu-0.32-compile-cold.log")
    assert phases(record) == ["container", "weights", "compile", "kv_cache", "api", "healthy"]
    spans = record.seconds()
    assert record.cache == MISS
    assert spans["compile"] == pytest.approx(between(
        "cpu-0.32-compile-cold.log", "Warming up model for the compilation",
        "Initial profiling/warmup run"))
    assert spans["compile"] > 30
    assert max(spans, key=lambda p: spans[p]) == "compile"


def test_cpu_restart_with_the_cache_on_a_volume_still_compiles_again() -> None:
    """vLLM 0.32's CPU build finds its AOT cache but cannot load it: a miss, said so."""
    record = replay("cpu-0.32-compile-restart.log")
    assert record.cache == MISS
    assert record.seconds()["compile"] == pytest.approx(between(
        "cpu-0.32-compile-restart.log", "Warming up model for the compilation",
        "Initial profiling/warmup run"))


def test_gpu_v1_cache_miss_splits_the_start_like_vllm_does() -> None:
    record = replay("gpu-v1-compile-miss.log")
    assert phases(record) == ["container", "weights", "compile", "kv_cache", "graphs", "api",
                              "healthy"]
    assert record.cache == MISS
    assert record.figures == {"weights": pytest.approx(20.442057), "compile": 13.29,
                              "graphs": 18.0}
    spans = record.seconds()
    assert spans["weights"] == pytest.approx(21.0)  # 15:48:47 -> 15:49:08
    # Dynamo's 3.29 s moved compile's start back to where the weights ended.
    assert spans["compile"] == pytest.approx(33.0)  # 15:49:08 -> 15:49:41
    # The progress bars carry no stamp: vLLM's 18 s place the graphs' start.
    assert spans["graphs"] == pytest.approx(18.0)
    assert spans["kv_cache"] == pytest.approx(30.0)  # 15:49:41 -> 15:50:11
    assert sum(spans.values()) == pytest.approx(record.total(now=0.0))


def test_gpu_v1_cache_hit() -> None:
    record = replay("gpu-v1-compile-hit.log")
    assert record.cache == HIT
    assert "graphs" not in record.seconds()  # this run captured none
    assert phases(record)[1:4] == ["weights", "compile", "kv_cache"]


def test_gpu_v0_engine_has_weights_profiling_and_graphs() -> None:
    record = replay("gpu-v0-0.6.6.log")
    assert phases(record) == ["container", "weights", "kv_cache", "graphs", "api"]
    assert record.figures == {"kv_cache": 1.94, "graphs": 37.0}
    assert record.seconds()["graphs"] == pytest.approx(37.0)  # 22:09:33 -> 22:10:10


@pytest.mark.parametrize(("line", "phase"), [
    ("(APIServer pid=7) INFO 12-03 12:26:08 [entry.py:140] Starting vLLM server on "
     "http://127.0.0.1:9231", "api"),
    ("INFO:     Uvicorn running on http://0.0.0.0:8000 (Press CTRL+C to quit)", "healthy"),
    ("(EngineCore pid=74) INFO 12-03 12:26:03 [kv_cache_utils.py:2327] CPU KV cache size: "
     "46,592 tokens, Maximum concurrency for 2,048 tokens per request: 22.75x", "kv_cache"),
])
def test_single_lines(line: str, phase: str) -> None:
    seen = read("vllm", line)
    assert seen is not None and seen.phase == phase


def test_a_server_kind_without_a_table_recognises_nothing() -> None:
    line = "(Worker pid=1) INFO 01-01 00:00:00 [x.py:1] Loading weights took 1.00 seconds"
    assert read("vllm", line) is not None
    assert read("other", line) is None and not has_table("other")


def test_lines_out_of_order_never_make_a_phase_negative() -> None:
    record = StartRecord("m", "p", START, began=100.0)
    record.saw(Seen("weights"), 105.0)
    record.saw(Seen("kv_cache"), 103.0)  # another process, stamped earlier
    record.end(110.0, ok=True)
    assert record.seconds() == {"container": 5.0, "weights": 0.0, "kv_cache": 5.0}


def test_a_wake_is_woken_then_warm_and_records_keep_the_last_few() -> None:
    records = StartRecords(keep=2)
    for began in (0.0, 10.0, 20.0):
        record = records.begin(StartRecord("m", "p", WAKE, began=began))
        assert records.of("m")[-1] is record
        record.enter("warmup", began + 1.0)
        record.end(began + 1.5, ok=True)
        records.finish(record)
    kept = records.of("m")
    assert [r.began for r in kept] == [10.0, 20.0]
    assert kept[-1].seconds() == {"wake": 1.0, "warmup": 0.5}
    assert kept[-1].to_json(now=99.0)["phases"] == [
        {"phase": "wake", "seconds": 1.0}, {"phase": "warmup", "seconds": 0.5}]


def test_a_wait_for_gpu_memory_is_its_own_phase_not_the_containers() -> None:
    record = StartRecord("m", "p", START, began=100.0)
    record.admitted(104.0)  # the budget let it go on after 4 s
    record.saw(Seen("weights"), 106.0)
    record.end(107.0, ok=True)
    assert record.seconds() == {"waiting_for_gpus": 4.0, "container": 2.0, "weights": 1.0}
    # Admitted at once (no placement, or room): no phase for it.
    quick = StartRecord("m", "p", WAKE, began=100.0, level=2)
    quick.admitted(100.001)
    quick.end(101.0, ok=True)
    assert quick.seconds() == {"wake": 1.0}
    assert quick.to_json(0.0)["level"] == 2


def test_a_failed_start_keeps_its_phases_so_far() -> None:
    record = StartRecord("m", "p", START, began=0.0)
    record.saw(Seen("weights"), 2.0)
    record.end(5.0, ok=False)
    shown = record.to_json(now=9.0)
    assert shown["ok"] is False and shown["phase"] is None
    assert shown["phases"] == [{"phase": "container", "seconds": 2.0},
                               {"phase": "weights", "seconds": 3.0}]
    assert "level" not in shown
