"""Weights read ahead (anatomy/prefetch.py): which files, from where, and when not."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from supervisor.anatomy.prefetch import (
    CHUNK,
    Prefetch,
    mounted_weights,
    read_ahead,
    wants,
    weight_files,
)
from supervisor.config import ModelConfig
from supervisor.observe.host import mem_available
from supervisor.rules.table import State


def weights(folder: Path, sizes: dict[str, int]) -> Path:
    for name, size in sizes.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"w" * size)
    return folder


def test_every_weight_file_is_read_whole_in_chunks(tmp_path: Path) -> None:
    folder = weights(tmp_path, {"model-00001.safetensors": 9 << 20, "sub/model-2.safetensors": 5,
                                "config.json": 7, ".git/pack.bin": 3})
    files = weight_files(folder)
    assert [p.name for p in files] == ["model-00001.safetensors", "model-2.safetensors"]
    outcome = read_ahead(files, available=1 << 40)
    assert (outcome.files, outcome.read, outcome.skipped) == (2, (9 << 20) + 5, None)


def test_a_folder_without_known_weights_is_read_whole(tmp_path: Path) -> None:
    folder = weights(tmp_path, {"a.dat": 10, "b.json": 4})
    assert read_ahead(weight_files(folder), None).read == 14


def test_weights_larger_than_the_memory_available_are_skipped(tmp_path: Path) -> None:
    files = weight_files(weights(tmp_path, {"m.safetensors": 4096}))
    outcome = read_ahead(files, available=4095)
    assert outcome.read == 0
    assert outcome.skipped is not None and "GiB of memory available" in outcome.skipped


def test_mem_available_reads_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemAvailable:   24005488 kB\n")
    assert mem_available(meminfo) == 24005488 * 1024
    assert mem_available(tmp_path / "none") is None


def test_the_host_folder_of_the_model_mount() -> None:
    gpu = {"command": ["--model=/models/Step-Audio-R1.1", "--tensor-parallel-size=4"],
           "volumes": [{"type": "bind", "source": "/srv/models", "target": "/models"},
                       {"type": "volume", "source": "vllm-cache", "target": "/root/.cache"}]}
    assert mounted_weights(gpu) == Path("/srv/models/Step-Audio-R1.1")
    serve = {"command": "serve /m/smol --port 9", "volumes": [
        {"type": "bind", "source": "/data/smol", "target": "/m/smol"}]}
    assert mounted_weights(serve) == Path("/data/smol")
    assert mounted_weights({"command": ["--model", "org/name"], "volumes": []}) is None
    assert mounted_weights({"command": ["--model=/models/x"], "volumes": []}) is None


def test_prefetch_is_per_profile_with_the_models_as_default() -> None:
    model = ModelConfig.model_validate({
        "upstream": "http://127.0.0.1:1", "prefetch": True, "default_profile": "a",
        "profiles": {"a": {"service": "a"}, "b": {"service": "b", "prefetch": False}}})
    assert wants(model, "a") and not wants(model, "b")


def unit(name: str, config: ModelConfig, profile: str = "default") -> Any:
    return SimpleNamespace(name=name, config=config,
                           profile=SimpleNamespace(name=profile, service=name))


async def test_a_start_reads_the_model_dir_once(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="supervisor.prefetch")
    folder = weights(tmp_path / "m", {"m.safetensors": 3 << 20})
    on = unit("m", ModelConfig.model_validate({
        "service": "m", "upstream": "http://127.0.0.1:1", "prefetch": True,
        "model_dir": str(folder)}))
    off = unit("n", ModelConfig.model_validate({
        "service": "n", "upstream": "http://127.0.0.1:1", "model_dir": str(folder)}))
    prefetch = Prefetch(None, available=lambda: 1 << 40)
    prefetch.on_state(on, State.STOPPED, State.STARTING, "start")
    prefetch.on_state(on, State.STARTING, State.STARTING, "again")  # not a second read
    prefetch.on_state(off, State.STOPPED, State.STARTING, "start")
    assert len(prefetch.tasks) == 1
    [outcome] = await asyncio.gather(*prefetch.tasks)
    assert outcome is not None and outcome.read == 3 << 20
    assert "model=m prefetch read 1 files, 0.00 GiB" in caplog.text


async def test_too_large_is_said_in_the_log(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="supervisor.prefetch")
    folder = weights(tmp_path / "m", {"m.safetensors": 1 << 20})
    big = unit("m", ModelConfig.model_validate({
        "service": "m", "upstream": "http://127.0.0.1:1", "prefetch": True,
        "model_dir": str(folder)}))
    prefetch = Prefetch(None, available=lambda: 1000)
    prefetch.on_state(big, State.STOPPED, State.STARTING, "start")
    [outcome] = await asyncio.gather(*prefetch.tasks)
    assert outcome is not None and outcome.read == 0
    assert "model=m prefetch skipped: 0.0 GiB of weights" in caplog.text


async def test_reading_stops_when_the_start_ends_first(tmp_path: Path) -> None:
    folder = weights(tmp_path / "m", {"m.safetensors": 6 * CHUNK})
    fast = unit("m", ModelConfig.model_validate({
        "service": "m", "upstream": "http://127.0.0.1:1", "prefetch": True,
        "model_dir": str(folder)}))
    prefetch = Prefetch(None, available=lambda: 1 << 40)
    prefetch.on_state(fast, State.STOPPED, State.STARTING, "start")
    prefetch.on_state(fast, State.STARTING, State.READY, "healthy")
    [outcome] = await asyncio.gather(*prefetch.tasks)
    assert outcome is not None and outcome.read <= CHUNK
