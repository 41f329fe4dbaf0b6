"""The stand-in's GPU ledger: memory taken at start under a file lock, vLLM's own error when
too little is free, given back on exit, reclaimed from holders that died without saying so.
The ledger module directly, then standin.py as real processes (no Docker)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.standin import STANDIN, load_ledger

GiB = 1 << 30



L = load_ledger()


@pytest.fixture
def ledger(tmp_path: Path) -> str:
    path = str(tmp_path / "ledger.json")
    L.init(path, {0: 4 * GiB, 1: 4 * GiB})
    return path


def test_take_until_full_then_vllms_error(ledger: str) -> None:
    assert L.take(ledger, "stt", [0], model="stt", vram=int(3.1 * GiB)) is None
    error = L.take(ledger, "tts", [0], model="tts", vram=2 * GiB)
    assert error == (
        "ValueError: Free memory on device cuda:0 (0.9/4.0 GiB) on startup is less than "
        "desired GPU memory utilization (0.5, 2.0 GiB). Decrease GPU memory utilization "
        "or reduce GPU memory used by other processes.")
    assert L.held(ledger) == {0: int(3.1 * GiB), 1: 0}
    L.release(ledger, "stt")
    assert L.take(ledger, "tts", [0], model="tts", vram=2 * GiB) is None


def test_utilization_claims_a_share_of_the_total_like_vllm(ledger: str) -> None:
    assert L.take(ledger, "a", [1], model="a") is None  # vLLM's default 0.9
    assert L.held(ledger)[1] == -(-4 * GiB * 9 // 10)
    error = L.take(ledger, "b", [0, 1], model="b", utilization=0.2)
    assert error is not None and "device cuda:1 (0.4/4.0 GiB)" in error
    assert L.held(ledger)[0] == 0  # all or nothing


def test_an_unknown_gpu_is_cudas_invalid_ordinal(ledger: str) -> None:
    assert "invalid device ordinal" in L.take(ledger, "a", [7], model="a")


def test_stale_heartbeats_are_reclaimed_and_null_ones_never(ledger: str) -> None:
    assert L.take(ledger, "old", [0], model="old", vram=GiB, now=100.0) is None
    with L.locked(ledger) as data:  # memory of a process the supervisor does not own
        data["gpus"]["0"]["holders"]["xorg"] = {"bytes": GiB, "heartbeat": None}
    assert L.held(ledger, now=105.0)[0] == 2 * GiB
    assert L.heartbeat(ledger, "old", now=108.0)
    assert L.held(ledger, now=117.0)[0] == 2 * GiB
    assert L.held(ledger, now=119.0)[0] == GiB  # 11 s without a heartbeat: gone
    assert not L.heartbeat(ledger, "old")
    assert L.take(ledger, "quick", [0], model="q", vram=GiB, now=200.0, stale=2.0) is None
    assert L.held(ledger, now=201.5)[0] == 2 * GiB  # every reader honours its own limit
    assert L.held(ledger, now=202.5)[0] == GiB


def test_a_dead_pid_in_this_pid_namespace_is_reclaimed_at_once(ledger: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert L.take(ledger, "child", [0], model="c", vram=GiB) is None
    with L.locked(ledger) as data:
        data["gpus"]["0"]["holders"]["child"]["pid"] = child.pid
    assert L.held(ledger)[0] == GiB
    child.kill()
    child.wait()
    assert L.held(ledger)[0] == 0


def test_sleep_shrinks_and_wake_grows_back_or_fails_like_torch(ledger: str) -> None:
    assert L.take(ledger, "a", [0], model="a", vram=3 * GiB) is None
    assert L.resize(ledger, "a", {0: GiB // 2}) is None
    assert L.take(ledger, "b", [0], model="b", vram=3 * GiB) is None
    oom = L.resize(ledger, "a", {0: 3 * GiB})
    assert oom == ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.5 GiB. "
                   "GPU 0 has a total capacity of 4.0 GiB of which 0.5 GiB is free.")
    assert L.holding(ledger, "a") == {0: GiB // 2}


# -- standin.py as a process -----------------------------------------------------------


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def _standin(procs: list[subprocess.Popen[str]], ledger: str, port: int, **env: str
             ) -> subprocess.Popen[str]:
    full = {**os.environ, "STANDIN_PORT": str(port), "STANDIN_GPU_LEDGER": ledger, **env}
    proc = subprocess.Popen([sys.executable, str(STANDIN / "standin.py")], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    return proc


def _listening(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if "listening" in line:
            return
    raise AssertionError(f"exited {proc.wait()}: {proc.stderr.read() if proc.stderr else ''}")


def _post(port: int, path: str) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_second_standin_that_does_not_fit_exits_with_vllms_error(
        ledger: str, procs: list[subprocess.Popen[str]]) -> None:
    first = _standin(procs, ledger, _port(), STANDIN_MODEL="stt",
                     STANDIN_VRAM_BYTES=str(int(3.1 * GiB)))
    _listening(first)
    second = _standin(procs, ledger, _port(), STANDIN_MODEL="tts",
                      STANDIN_GPU_MEMORY_UTILIZATION="0.5")
    _, err = second.communicate(timeout=30)
    assert second.returncode == 1
    assert ("ValueError: Free memory on device cuda:0 (0.9/4.0 GiB) on startup is less than "
            "desired GPU memory utilization (0.5, 2.0 GiB)") in err
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0
    assert L.held(ledger) == {0: 0, 1: 0}  # given back on SIGTERM
    third = _standin(procs, ledger, _port(), STANDIN_GPU_MEMORY_UTILIZATION="0.5",
                     STANDIN_GPU_IDS="0,1")
    _listening(third)
    assert L.held(ledger) == {0: 2 * GiB, 1: 2 * GiB}
    third.kill()  # SIGKILL: no goodbye; its pid is gone, so is its claim
    third.wait()
    assert L.held(ledger) == {0: 0, 1: 0}


def test_a_standin_gives_memory_back_while_asleep(
        ledger: str, procs: list[subprocess.Popen[str]]) -> None:
    port = _port()
    sleeper = _standin(procs, ledger, port, STANDIN_DEV_MODE="1", STANDIN_VRAM_BYTES=str(3 * GiB),
                       STANDIN_SLEEP_VRAM_BYTES=str(GiB // 4))
    _listening(sleeper)
    assert _post(port, "/sleep") == 200
    assert L.held(ledger)[0] == GiB // 4
    assert L.take(ledger, "other", [0], model="other", vram=3 * GiB) is None
    assert _post(port, "/wake_up") == 500  # no room to wake: CUDA OOM
    L.release(ledger, "other")
    assert _post(port, "/wake_up") == 200
    assert L.held(ledger)[0] == 3 * GiB


def test_without_a_ledger_nothing_changes(tmp_path: Path, procs: list[subprocess.Popen[str]]
                                          ) -> None:
    env = {**os.environ, "STANDIN_PORT": str(_port())}
    env.pop("STANDIN_GPU_LEDGER", None)
    proc = subprocess.Popen([sys.executable, str(STANDIN / "standin.py")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    _listening(proc)  # it starts as it always did, and made no ledger
    assert not list(tmp_path.iterdir())
