"""Which phase of a start a server's log line tells of: one table of patterns per server
kind, pure (no I/O), so it is tested on real log lines.

A phase runs from the line that begins it until the next phase begins; a start's seconds
are thereby split without gaps. The supervisor adds what it sees itself: `container`
from the start's beginning (the container is created, the process imports), `healthy`
(from the server saying it listens, or from the container running for a server kind
with no table, until the first healthy answer) and `warmup`. A line that gives a phase's
own figure ("Loading weights took 1.70 seconds") keeps that figure beside the measured
span, and moves the phase's beginning back to that long before the line where it was
seen later (a progress bar is stamped when it ends) or not at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CONTAINER, WEIGHTS, COMPILE, KV_CACHE, GRAPHS, API, HEALTHY, WARMUP = (
    "container", "weights", "compile", "kv_cache", "graphs", "api", "healthy", "warmup")
# The order of a vLLM cold start; a server kind may add phases of its own.
PHASES = (CONTAINER, WEIGHTS, COMPILE, KV_CACHE, GRAPHS, API, HEALTHY, WARMUP)
HIT, MISS = "hit", "miss"  # whether torch.compile found its graphs in the cache


@dataclass(frozen=True, slots=True)
class Mark:
    """One pattern of a table: from a matching line on, `phase` runs."""

    pattern: re.Pattern[str]
    phase: str
    figure_of: str | None = None  # the phase whose own seconds the `s` group gives
    cache: str | None = None


@dataclass(frozen=True, slots=True)
class Seen:
    """What one log line said."""

    phase: str
    figure_of: str | None = None
    seconds: float | None = None
    cache: str | None = None


def _mark(pattern: str, phase: str, figure_of: str | None = None,
          cache: str | None = None) -> Mark:
    return Mark(re.compile(pattern), phase, figure_of, cache)


_S = r"(?P<s>\d+(?:\.\d+)?)"
# vLLM, V1 and V0 engines, GPU and CPU builds. The messages as vLLM formats them; the
# real lines they were tested on are in tests/unit/data/vllm_logs/ (with where each came from).
VLLM: tuple[Mark, ...] = (
    _mark(r"Starting to load model", WEIGHTS),
    _mark(rf"Loading weights took {_S} seconds", WEIGHTS, WEIGHTS),
    # The weights are in: what follows is profiling, unless torch.compile comes first.
    _mark(rf"Model loading took [\d.]+ Gi?B(?: memory)? and {_S} seconds", KV_CACHE, WEIGHTS),
    _mark(r"Loading model weights took [\d.]+ GB", KV_CACHE),  # V0: no seconds
    _mark(r"Directly load the compiled graph\(s\) for .* from the cache, took " + _S,
          COMPILE, cache=HIT),
    _mark(r"Directly load AOT compilation from path", COMPILE, cache=HIT),
    _mark(r"Compiling a graph for .* takes " + _S, COMPILE, cache=MISS),
    _mark(r"Compiling model again due to a load failure|saved AOT compiled function",
          COMPILE, cache=MISS),
    _mark(r"Using cache directory: .* for vLLM's torch\.compile", COMPILE),
    # Dynamo traces before vLLM's backend says anything: compile began this long ago.
    _mark(rf"Dynamo bytecode transform time: {_S} s", COMPILE, COMPILE),
    _mark(r"Starting torch\.compile|Warming up model for the compilation", COMPILE),
    _mark(rf"torch\.compile (?:takes|took) {_S} s in total", KV_CACHE, COMPILE),
    _mark(rf"Memory profiling takes {_S} seconds", KV_CACHE, KV_CACHE),
    _mark(r"Initial profiling/warmup run took|Available KV cache memory|KV cache size: "
          r"[\d,]+ tokens|# (?:GPU|CUDA|cuda|CPU|cpu) blocks:|GiB for KV cache on node|"
          r"Warming up done", KV_CACHE),
    _mark(rf"Graph capturing finished in {_S} secs", GRAPHS, GRAPHS),  # after a bar, too
    _mark(r"Capturing (?:CUDA graph|cudagraphs)", GRAPHS),
    _mark(r"init engine \(profile, create kv cache, warmup model\) took", API),
    _mark(r"Starting vLLM (?:API )?server", API),
    _mark(r"Application startup complete|Uvicorn running on", HEALTHY),
)

TABLES: dict[str, tuple[Mark, ...]] = {"vllm": VLLM}


def has_table(kind: str) -> bool:
    return kind in TABLES


def read(kind: str, line: str) -> Seen | None:
    """The phase a log line of a `kind` server begins or continues; None: no news. The
    first pattern that matches decides (a progress bar and a message may share a line)."""
    for mark in TABLES.get(kind, ()):
        found = mark.pattern.search(line)
        if found is None:
            continue
        figure = found.groupdict().get("s")
        return Seen(mark.phase, mark.figure_of if figure is not None else None,
                    None if figure is None else float(figure), mark.cache)
    return None
