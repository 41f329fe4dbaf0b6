"""The estimate of a spooled JSON body equals `Estimator.for_json` of the parsed body, and
is made without holding the body (or its audio) in memory."""

from __future__ import annotations

import base64
import json
import random
import struct
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.proxy.jsonestimate import PIECE_BYTES, estimate_spooled
from supervisor.proxy.spool import Spool
from supervisor.tokens.estimate import Estimator

ESTIMATOR = Estimator(None, reserved_tokens=7, tokens_per_audio_second=12.5,
                      default_output_tokens=16)


def wav(seconds: float, rate: int = 8000) -> bytes:
    data = int(seconds * rate) * 2
    return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data) + bytes(data))


TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
AUDIO = st.one_of(
    st.floats(0.1, 3.0).map(lambda s: base64.b64encode(wav(s)).decode()),
    st.just("not base64 at all!"), st.just(""), st.just("UklGRg=="),
)
LIMIT = st.one_of(st.integers(-3, 5000), st.floats(0, 10), st.booleans(), st.just("12"),
                  st.none())
PART = st.one_of(
    TEXT,
    st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
    st.fixed_dictionaries({"type": st.just("input_audio"),
                           "input_audio": st.fixed_dictionaries({"data": AUDIO,
                                                                 "format": st.just("wav")})}),
    st.fixed_dictionaries({"text": st.integers()}),
    st.integers(),
    st.lists(st.integers(), max_size=3),
)
CONTENT = st.one_of(TEXT, st.lists(PART, max_size=4), st.none(), st.dictionaries(TEXT, TEXT))
MESSAGE = st.one_of(st.fixed_dictionaries({"role": st.just("user"), "content": CONTENT}),
                    TEXT, st.integers())
MEMBERS = st.lists(st.one_of(
    st.tuples(st.just("messages"), st.one_of(st.lists(MESSAGE, max_size=4), TEXT,
                                             st.none())),
    st.tuples(st.sampled_from(["prompt", "input"]), CONTENT),
    st.tuples(st.sampled_from(["max_tokens", "max_completion_tokens"]), LIMIT),
    st.tuples(st.sampled_from(["model", "temperature", "x"]), st.one_of(TEXT, st.integers())),
), max_size=7)


def render(members: list[tuple[str, object]], seed: int) -> bytes:
    """An object with these members in order, duplicates kept (parsers keep the last)."""
    rnd = random.Random(seed)
    ascii_only = rnd.random() < 0.5
    parts = [f"{json.dumps(k)}:{json.dumps(v, ensure_ascii=ascii_only)}" for k, v in members]
    return ("{" + ", ".join(parts) + "}").encode()


async def spooled(data: bytes) -> Spool:
    spool = Spool()
    for at in range(0, len(data), 100_003):
        await spool.append(data[at : at + 100_003])
    return spool


def same(need_a: object, need_b: object) -> None:
    a, b = vars_of(need_a), vars_of(need_b)
    assert a == b


def vars_of(need: object) -> dict[str, object]:
    fields = ("prompt_tokens", "output_tokens", "reserved_tokens", "audio_seconds",
              "audio_tokens", "exact_text")
    out: dict[str, object] = {f: getattr(need, f) for f in fields}
    out["notes"] = set(need.notes)  # type: ignore[attr-defined]
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MEMBERS, st.integers(0, 2**32))
async def test_a_spooled_body_is_estimated_as_the_parsed_body_is(
        members: list[tuple[str, object]], seed: int) -> None:
    data = render(members, seed)
    spool = await spooled(data)
    try:
        same(estimate_spooled(ESTIMATOR, spool), ESTIMATOR.for_json(json.loads(data)))
    finally:
        spool.close()


async def test_a_chat_with_long_audio_is_estimated_without_holding_it() -> None:
    clip = base64.b64encode(wav(600.0, rate=16000)).decode()  # 19 MB of WAV, 26 MB base64
    body = json.dumps({"model": "m", "max_tokens": 100, "messages": [
        {"role": "system", "content": "Transcribe."},
        {"role": "user", "content": [{"type": "text", "text": "here it is"},
                                     {"type": "input_audio",
                                      "input_audio": {"data": clip, "format": "wav"}}]},
    ]}).encode()
    spool = await spooled(body)
    del clip
    tracemalloc.start()
    try:
        need = estimate_spooled(ESTIMATOR, spool)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        spool.close()
    assert need.audio_seconds == 600.0
    assert need.audio_tokens == 7500 and need.output_tokens == 100
    same(need, ESTIMATOR.for_json(json.loads(body)))
    print(f"peak traced memory while estimating a {len(body) / 1e6:.0f} MB body: "
          f"{peak / 1e6:.2f} MB")
    assert peak < 3 << 20  # blocks of 256 KiB and a 350 KB head, never the clip


async def test_a_text_larger_than_a_piece_is_counted_piece_by_piece() -> None:
    text = ("plain words and more words " * 100_000)[: PIECE_BYTES * 3 + 12_345]
    body = json.dumps({"prompt": text}).encode()
    spool = await spooled(body)
    try:
        need = estimate_spooled(ESTIMATOR, spool)
    finally:
        spool.close()
    whole = ESTIMATOR.for_json({"prompt": text})
    # Cut at spaces, the pieces count what the whole counts (a word cut in two at most once
    # per piece is the only difference, and only ever upwards).
    assert whole.prompt_tokens <= need.prompt_tokens <= whole.prompt_tokens + 4


async def test_texts_are_counted_with_the_models_tokenizer() -> None:
    counted: list[str] = []

    def count(text: str) -> int:
        counted.append(text)
        return len(text.split())

    estimator = Estimator(count, 0, 12.5, 16)
    body = b'{"prompt": ["one two", "three \\u00e9\\n"], "messages": [{"content": "four"}]}'
    spool = await spooled(body)
    try:
        need = estimate_spooled(estimator, spool)
    finally:
        spool.close()
    assert sorted(counted) == sorted(["one two", "three \u00e9\n", "four"])
    assert need.prompt_tokens == 5 and need.exact_text
