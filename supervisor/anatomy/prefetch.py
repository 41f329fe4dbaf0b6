"""Weights read ahead: as soon as a start begins, a profile with `prefetch: true` has its
weight files read into the page cache in a thread, while the container is created and
the server imports (seconds the disk would otherwise idle), so that the server's own load
reads memory. Skipped, and logged, when the files are larger than the memory available:
reading them would only push out what the page cache holds for others.

The files: the model's `model_dir`, else the host side of the service's mount that holds
its `--model` path, as `docker compose config` resolves the service. A planned pre-warm
(idle/keeper.py) starts its unit through the same `starting` state: it is read ahead too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from supervisor.config import ModelConfig
from supervisor.observe.host import mem_available
from supervisor.rules.table import State

if TYPE_CHECKING:
    from supervisor.lifecycle.handle import ModelHandle

log = logging.getLogger("supervisor.prefetch")
CHUNK = 8 << 20  # bytes per read
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# The Compose services as `docker compose config` resolves them, or a problem (blocking);
# given by the root (gpus/services.py): anatomy does not know the GPU side.
ReadServices = Callable[[], tuple[dict[str, dict[str, Any]], str | None]]


@dataclass(frozen=True, slots=True)
class Outcome:
    files: int
    read: int  # bytes
    seconds: float
    skipped: str | None = None  # why nothing was read


def wants(model: ModelConfig, profile: str) -> bool:
    """The profile's `prefetch`, else the model's."""
    own = model.profiles[profile].prefetch if profile in model.profiles else None
    return model.prefetch if own is None else own


def weight_files(folder: Path) -> list[Path]:
    """The weight files under `folder`; every file when it has none of the known kinds."""
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    weights = [p for p in files if p.suffix in WEIGHTS]
    return weights or files


def read_ahead(files: Iterable[Path], available: int | None,
               stopped: threading.Event | None = None) -> Outcome:
    """Read `files` through the page cache (blocking: run it in a thread); nothing when
    they are larger than `available` bytes. Stops between chunks once `stopped` is set."""
    began = time.monotonic()
    files = list(files)
    size = sum(p.stat().st_size for p in files)
    if available is not None and size > available:
        return Outcome(len(files), 0, 0.0, f"{size / 2**30:.1f} GiB of weights, "
                                           f"{available / 2**30:.1f} GiB of memory available")
    buffer = bytearray(CHUNK)
    done = 0
    for path in files:
        with open(path, "rb", buffering=0) as f:
            if hasattr(os, "posix_fadvise"):  # the kernel reads ahead of us, too
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
            while (n := f.readinto(buffer)) and not (stopped and stopped.is_set()):
                done += n
    return Outcome(len(files), done, time.monotonic() - began)


def _model_path(command: Any) -> str | None:
    """The path after vLLM's `--model` (or `serve`'s first argument)."""
    args = command.split() if isinstance(command, str) else [str(a) for a in command or ()]
    for i, arg in enumerate(args):
        if arg.startswith("--model="):
            return arg.split("=", 1)[1]
        if arg in ("--model", "serve") and i + 1 < len(args) and not args[i + 1].startswith("-"):
            return args[i + 1]
    return None


def mounted_weights(service: dict[str, Any]) -> Path | None:
    """The host folder of the service's model: the bind mount that holds its `--model`
    path, that path's place in it."""
    model = _model_path(service.get("command"))
    if model is None or not model.startswith("/"):
        return None
    inside = PurePosixPath(model)
    for volume in service.get("volumes") or ():
        if not isinstance(volume, dict) or volume.get("type") != "bind":
            continue
        target = PurePosixPath(str(volume.get("target", "")))
        if inside == target or target in inside.parents:
            return Path(str(volume["source"])) / inside.relative_to(target)
    return None


class Prefetch:
    """A listener (lifecycle/listeners.py): reads a unit's weights when it starts."""

    def __init__(self, services: ReadServices | None,
                 available: Callable[[], int | None] = mem_available) -> None:
        self._services = services  # None: no Compose (runtime: swarm)
        self._available = available
        self._running: dict[str, threading.Event] = {}
        self.tasks: set[asyncio.Task[Outcome | None]] = set()

    def on_state(self, unit: ModelHandle, old: State, new: State, event: str) -> None:
        if new is State.STARTING and old is not State.STARTING:
            if unit.name not in self._running and wants(unit.config, unit.profile.name):
                stopped = self._running[unit.name] = threading.Event()
                task = asyncio.get_running_loop().create_task(self._run(unit, stopped))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        elif old is State.STARTING and new is not State.STARTING and unit.name in self._running:
            self._running.pop(unit.name).set()  # started (or not): reading on is no use

    def stop(self) -> None:
        """Stop every read between chunks (the supervisor closes)."""
        for stopped in self._running.values():
            stopped.set()

    async def _run(self, unit: ModelHandle, stopped: threading.Event) -> Outcome | None:
        name, service = unit.name, unit.profile.service
        try:
            folder = unit.config.model_dir or await asyncio.to_thread(self._mounted, service)
            if folder is None or not folder.is_dir():
                log.info("model=%s prefetch skipped: no weights folder found (model_dir, or "
                         "a bind mount of service %r's --model path): %s", name, service, folder)
                return None
            files = await asyncio.to_thread(weight_files, folder)
            outcome = await asyncio.to_thread(read_ahead, files, self._available(), stopped)
        except OSError as exc:
            log.warning("model=%s prefetch failed: %s", name, exc)
            return None
        finally:
            if self._running.get(name) is stopped:
                del self._running[name]
        if outcome.skipped:
            log.info("model=%s prefetch skipped: %s", name, outcome.skipped)
        else:
            log.info("model=%s prefetch read %d files, %.2f GiB in %.1fs%s", name,
                     outcome.files, outcome.read / 2**30, outcome.seconds,
                     " (stopped: the start ended first)" if stopped.is_set() else "")
        return outcome

    def _mounted(self, service: str) -> Path | None:
        if self._services is None:
            return None
        services, problem = self._services()
        if problem or service not in services:
            return None
        return mounted_weights(services[service])
