"""A JSON file that plays the physical GPUs for stand-ins, so that placement can be proven
without a GPU: a stand-in takes its memory from it at start and exits with vLLM's own
error when too little is free, as a real vLLM does when another process holds the GPU.

Stdlib only (it runs in a bare container beside standin.py). The file is shared by every
stand-in and the test harness (bind-mount its directory), and changed only under an
exclusive `fcntl.flock` on the file itself, rewritten in place (a bind-mounted file cannot
be replaced by rename):

    {"gpus": {"0": {"total": 4294967296,
                    "holders": {"<token>": {"bytes": 3328599654, "model": "stt",
                                            "pid": 7, "pidns": "pid:[4026532311]",
                                            "heartbeat": 1767225600.0}}}}}

Giving memory back: on exit (SIGTERM, atexit) the holder removes its entries. A process
killed with SIGKILL cannot, so an entry also counts as gone when
  - its heartbeat (refreshed by a thread) is older than the entry's own "stale" seconds
    (`STALE` when absent): the holder says how long it may fall silent, so every reader
    judges it alike, or
  - its pid namespace is the reader's and that pid no longer exists (host processes and
    unit tests: reclaimed at once; across containers the pid namespaces differ and only
    the heartbeat tells).
A holder with "heartbeat": null never goes stale: the harness uses it for memory held
by processes the supervisor does not own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

GIB = 1 << 30
HEARTBEAT = 1.0
STALE = 10.0


def format_gib(n: float) -> str:
    """As vLLM prints sizes: GiB rounded to two decimals."""
    return f"{round(n / GIB, 2)}"


def pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def new_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def init(path: str, totals: dict[int, int]) -> None:
    """Create (or reset) a ledger with these GPU totals and no holders."""
    data = {"gpus": {str(g): {"total": t, "holders": {}} for g, t in totals.items()}}
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


@contextlib.contextmanager
def locked(path: str) -> Iterator[dict[str, Any]]:
    """The ledger's content under an exclusive lock; written back when the block ends."""
    with open(path, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            text = f.read()
            data: dict[str, Any] = json.loads(text) if text.strip() else {"gpus": {}}
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                f.seek(0)
                f.truncate()
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _alive(holder: dict[str, Any], now: float, pidns: str) -> bool:
    beat = holder.get("heartbeat")
    if beat is not None and now - float(beat) > float(holder.get("stale") or STALE):
        return False
    if pidns and holder.get("pidns") == pidns and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


def reap(data: dict[str, Any], now: float) -> list[str]:
    """Drop the entries of dead holders; their tokens."""
    pidns = pid_namespace()
    gone = []
    for gpu in data.get("gpus", {}).values():
        holders = gpu.setdefault("holders", {})
        for token in [t for t, h in holders.items() if not _alive(h, now, pidns)]:
            del holders[token]
            gone.append(token)
    return gone


def free(data: dict[str, Any], gpu: int, *, but: str = "") -> int:
    entry = data["gpus"][str(gpu)]
    used = sum(int(h["bytes"]) for t, h in entry.get("holders", {}).items() if t != but)
    return int(entry["total"]) - used


def requested(total: int, utilization: float | None, vram: int | None) -> tuple[int, float]:
    """(bytes, utilization): vLLM claims ceil(total x utilization) on each GPU."""
    if vram is not None:
        return vram, round(vram / total, 4)
    ratio = 0.9 if utilization is None else utilization
    return math.ceil(total * ratio), ratio


def take(path: str, token: str, gpus: list[int], *, model: str,
         utilization: float | None = None, vram: int | None = None,
         now: float | None = None, stale: float = STALE) -> str | None:
    """Take memory on every GPU (all or nothing). None when taken, else vLLM's error line
    for the first GPU that is short (`cuda:N` counts the GPUs this process sees)."""
    now = time.time() if now is None else now
    with locked(path) as data:
        reap(data, now)
        wants: dict[int, int] = {}
        for local, gpu in enumerate(gpus):
            if str(gpu) not in data.get("gpus", {}):
                return "RuntimeError: CUDA error: invalid device ordinal"
            total = int(data["gpus"][str(gpu)]["total"])
            want, ratio = requested(total, utilization, vram)
            available = free(data, gpu, but=token)
            if available < want:
                return (
                    f"ValueError: Free memory on device cuda:{local} "
                    f"({format_gib(max(available, 0))}/{format_gib(total)} GiB) on startup "
                    f"is less than desired GPU memory utilization ({ratio}, "
                    f"{format_gib(want)} GiB). Decrease GPU memory utilization or reduce "
                    "GPU memory used by other processes."
                )
            wants[gpu] = want
        holder = {"model": model, "pid": os.getpid(), "pidns": pid_namespace(),
                  "heartbeat": now, "stale": stale}
        for gpu, want in wants.items():
            data["gpus"][str(gpu)]["holders"][token] = {**holder, "bytes": want}
    return None


def resize(path: str, token: str, sizes: dict[int, int], now: float | None = None
           ) -> str | None:
    """Hold `sizes[gpu]` bytes on each GPU the token holds (sleep, wake). None when done,
    else a CUDA out-of-memory line (growing beyond what is free), as torch reports it."""
    now = time.time() if now is None else now
    with locked(path) as data:
        reap(data, now)
        for gpu, size in sizes.items():
            entry = data["gpus"][str(gpu)]
            grow = size - int(entry["holders"].get(token, {}).get("bytes", 0))
            available = free(data, gpu)
            if grow > available:
                return (
                    f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
                    f"{format_gib(grow)} GiB. GPU {gpu} has a total capacity of "
                    f"{format_gib(int(entry['total']))} GiB of which "
                    f"{format_gib(max(available, 0))} GiB is free."
                )
        holder = {"pid": os.getpid(), "pidns": pid_namespace(), "heartbeat": now}
        for gpu, size in sizes.items():
            holders = data["gpus"][str(gpu)]["holders"]
            holders[token] = {**holders.get(token, {}), **holder, "bytes": size}
    return None


def holding(path: str, token: str) -> dict[int, int]:
    """What the token holds on each GPU."""
    with locked(path) as data:
        return {int(g): int(e["holders"][token]["bytes"])
                for g, e in data.get("gpus", {}).items() if token in e.get("holders", {})}


def heartbeat(path: str, token: str, now: float | None = None) -> bool:
    """Refresh the token's entries; False when they are gone (reaped as stale, or reset)."""
    now = time.time() if now is None else now
    with locked(path) as data:
        found = False
        for entry in data.get("gpus", {}).values():
            holder = entry.get("holders", {}).get(token)
            if holder is not None:
                holder["heartbeat"] = now
                found = True
    return found


def release(path: str, token: str) -> None:
    with contextlib.suppress(OSError, ValueError), locked(path) as data:
        for entry in data.get("gpus", {}).values():
            entry.get("holders", {}).pop(token, None)


def held(path: str, now: float | None = None) -> dict[int, int]:
    """Bytes held on each GPU by live holders (for tests and the harness)."""
    now = time.time() if now is None else now
    with locked(path) as data:
        reap(data, now)
        return {int(g): int(e["total"]) - free(data, int(g)) for g, e in data["gpus"].items()}
