"""Usage read from answers: the tail of a JSON answer, a stream's usage event (taken out
when the client did not ask for it, wherever the reads cut it), and the request that asks."""

from __future__ import annotations

import json

import orjson
import pytest

from supervisor.clients.usage import (
    StreamTap,
    ask_for_usage,
    keep_tail,
    read_usage,
    tail_usage,
    tap_for,
)

CHUNK = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
USAGE = (b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,'
         b'"total_tokens":17}}\n\n')
SPACED = ('data: ' + json.dumps({"id": "c", "choices": [], "usage": {
    "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}) + '\n\n').encode()
DONE = b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    ("body", "usage"),
    [
        (orjson.dumps({"choices": [{"message": {"content": "x"}}],
                       "usage": {"prompt_tokens": 9, "completion_tokens": 2}}), (9, 2)),
        (json.dumps({"usage": {"prompt_tokens": 1, "total_tokens": 1}}).encode(), (1, 0)),
        (b'{"choices":[{"message":{"content":"\\"usage\\": no"}}]}', None),
        (b'{"usage": null}', None),
        (b'{"usage":{"prompt_tokens":4},"usage":{"completion_tokens":5}}', (0, 5)),
        (b'{"usage":{"prompt_tokens":4},"note":"\\"usage\\": later"}', (4, 0)),
        (b"not json", None),
        # OpenAI's nested details after the counts, vLLM's null ones, spaces anywhere.
        (b'{"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10,'
         b'"prompt_tokens_details":{"cached_tokens":0}}}', (7, 3)),
        (b'{"usage": {"prompt_tokens": 5, "total_tokens": 6, "completion_tokens": 1, '
         b'"prompt_tokens_details": null}}', (5, 1)),
        (b'{"usage" :\n { "prompt_tokens" : 8 ,"completion_tokens":"x"}}', (8, 0)),
    ],
)
def test_read_usage(body: bytes, usage: tuple[int, int] | None) -> None:
    assert read_usage(body) == usage
    tail = b""
    for i in range(0, len(body), 7):
        tail = keep_tail(tail, body[i:i + 7])
    assert tail_usage(tail) == usage


@pytest.mark.parametrize(
    ("payload", "asks"),
    [({"model": "m", "stream": True}, True),
     ({"model": "m", "stream": True, "stream_options": {"include_usage": True}}, False),
     ({"model": "m", "stream": True, "stream_options": {}}, False),
     ({"model": "m", "stream": False}, False),
     ({"model": "m"}, False)],
)
def test_ask_for_usage(payload: dict[str, object], asks: bool) -> None:
    data = b"  " + orjson.dumps(payload)
    asked = ask_for_usage(payload, data)
    assert (asked is not None) == asks
    if asked is not None:
        assert orjson.loads(asked) == {**payload, "stream_options": {"include_usage": True}}


@pytest.mark.parametrize("usage_event", [USAGE, SPACED])
def test_a_tap_takes_out_the_usage_event_wherever_the_reads_cut(usage_event: bytes) -> None:
    stream = CHUNK * 3 + usage_event + DONE
    expected = (12, 5) if usage_event is USAGE else (3, 4)
    for cut in range(1, len(stream)):
        for cut2 in (cut, min(len(stream), cut + 40)):
            tap = StreamTap(drop=True)
            out = (tap.feed(stream[:cut]) + tap.feed(stream[cut:cut2]) + tap.feed(stream[cut2:])
                   + tap.end())
            assert out == CHUNK * 3 + DONE, cut
            assert tap.usage == expected


def test_a_tap_reads_but_keeps_the_usage_the_client_asked_for() -> None:
    stream = CHUNK + USAGE + DONE
    for cut in range(1, len(stream)):
        tap = StreamTap(drop=False)
        assert tap.feed(stream[:cut]) + tap.feed(stream[cut:]) + tap.end() == stream
        assert tap.usage == (12, 5)


def test_a_tap_holds_back_only_an_unfinished_event() -> None:
    tap = StreamTap(drop=True)
    assert tap.feed(CHUNK) == CHUNK  # a whole event goes on at once
    assert tap.feed(CHUNK[:10]) == b""
    assert tap.feed(CHUNK[10:]) == CHUNK


@pytest.mark.parametrize(
    ("headers", "asked", "chunked", "tap", "drop"),
    [([(b"Content-Type", b"text/event-stream; charset=utf-8")], True, True, True, True),
     ([(b"content-type", b"text/event-stream")], True, False, True, False),
     ([(b"content-type", b"text/event-stream")], False, True, True, False),
     ([(b"content-type", b"application/json")], True, True, False, False),
     ([], True, True, False, False)],
)
def test_tap_for(headers: list[tuple[bytes, bytes]], asked: bool, chunked: bool, tap: bool,
                 drop: bool) -> None:
    found = tap_for(headers, asked=asked, chunked=chunked)
    assert (found is not None) == tap
    assert found is None or found.drop == drop
