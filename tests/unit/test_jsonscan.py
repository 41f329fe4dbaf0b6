"""The incremental JSON scanner and the top-level `model` it finds, against real parsers.

What must hold for the router to be right: the `model` it routes on is the one json.loads
sees (last of duplicate keys, never a nested one, escapes decoded), its byte range holds
exactly that string, and a body is refused exactly when orjson (which checks the bodies
held in memory) refuses it, whatever the chunking.
"""

from __future__ import annotations

import json
import random
import time

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from supervisor.proxy.jsonmodel import ROOT, ModelFinder, find_model, locate_model, splice
from supervisor.proxy.jsonscan import (
    MAX_DEPTH,
    JsonError,
    JsonKind,
    JsonScanner,
    NotAnObject,
    Role,
    safe_cut,
)

KEYS = st.sampled_from(["model", "messages", "x", "mod", "models", "Model", "m\u00f6del"])
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | TEXT)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.lists(st.tuples(KEYS | TEXT, inner), max_size=4).map(lambda kv: ("obj", kv)),
    max_leaves=12,
)
WS = st.sampled_from(["", " ", "\n", "\t ", "\r\n  "])


def render(value: object, rnd: random.Random) -> str:
    """JSON text for `value`, where ("obj", pairs) is an object that may repeat keys."""
    ws = lambda: rnd.choice(["", " ", "\n  ", "\t"])  # noqa: E731
    ascii_only = rnd.random() < 0.5
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "obj":
        members = [f"{ws()}{json.dumps(k, ensure_ascii=ascii_only)}{ws()}:{ws()}"
                   f"{render(v, rnd)}{ws()}" for k, v in value[1]]
        return "{" + ",".join(members) + ws() + "}"
    if isinstance(value, list):
        return "[" + ",".join(ws() + render(v, rnd) + ws() for v in value) + ws() + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


@st.composite
def documents(draw: st.DrawFn, string_model: bool = False) -> bytes:
    """A top-level object whose members may repeat `model`, hold nested `model` keys, or
    spell the key with escapes; with `string_model`, the last `model` is a string."""
    members = draw(st.lists(st.tuples(KEYS, VALUES | TEXT), max_size=6))
    if string_model:
        others = KEYS.filter(lambda k: k != "model")
        members += [("model", draw(TEXT)),
                    *draw(st.lists(st.tuples(others, VALUES), max_size=2))]
    rnd = random.Random(draw(st.integers(0, 2**32)))
    parts = []
    for key, value in members:
        if key == "model" and rnd.random() < 0.7:
            value = draw(TEXT)  # mostly a string, the case that routes
        name = json.dumps(key, ensure_ascii=rnd.random() < 0.5)
        if key == "model" and rnd.random() < 0.2:
            name = '"m\\u006fdel"'
        parts.append(f"{name}{draw(WS)}:{draw(WS)}{render(value, rnd)}")
    return (draw(WS) + "{" + draw(WS) + ",".join(parts) + draw(WS) + "}" + draw(WS)).encode()


def chunked(data: bytes, sizes: list[int]) -> ModelFinder:
    finder = ModelFinder()
    scanner = JsonScanner(ROOT, finder)
    pos, i = 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)] if sizes else len(data)
        scanner.feed(data[pos : pos + size])
        pos, i = pos + size, i + 1
    scanner.close()
    return finder


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), st.lists(st.integers(1, 64), max_size=8))
def test_the_model_found_is_the_one_json_loads_sees(data: bytes, sizes: list[int]) -> None:
    expected = json.loads(data).get("model")
    event(f"model: {type(expected).__name__}; keys named model: {data.count(b'model')}")
    found = chunked(data, sizes).value
    if not isinstance(expected, str):
        assert found is None
        return
    assert found is not None
    assert found.name == expected
    assert json.loads(data[found.start : found.end]) == expected  # its exact byte range
    assert find_model(data) == found
    assert locate_model(data, expected) == found


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(documents(string_model=True), st.text(min_size=1, max_size=20))
def test_a_splice_changes_the_model_and_nothing_else(data: bytes, name: str) -> None:
    expected = json.loads(data)["model"]
    value = locate_model(data, expected)
    assert value is not None
    spliced = splice(data, value, name)
    assert json.loads(spliced) == {**json.loads(data), "model": name}
    assert spliced[: value.start] == data[: value.start]
    assert spliced.endswith(data[value.end :])


MUTATIONS = [*b'{}[]",:\\ 0123456789-+.eEtrufalsn', 0, 1, 0x1F, 0x7F, 0x80, 0xC3, 0xFF]


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(MUTATIONS),
                                       st.sampled_from(["insert", "replace", "delete"])),
                             min_size=1, max_size=3),
       st.lists(st.integers(1, 17), max_size=4))
def test_what_is_refused_is_what_orjson_refuses(data: bytes, edits: list[tuple[int, int, str]],
                                                sizes: list[int]) -> None:
    body = bytearray(data)
    for at, byte, how in edits:
        at %= len(body) + 1
        if how == "insert":
            body[at:at] = bytes([byte])
        elif at < len(body):
            body[at : at + 1] = b"" if how == "delete" else bytes([byte])
    body_bytes = bytes(body)
    try:
        orjson_ok = isinstance(orjson.loads(body_bytes), dict)
    except orjson.JSONDecodeError:
        orjson_ok = False
    try:
        json_ok = isinstance(json.loads(body_bytes), dict)
    except (ValueError, UnicodeDecodeError):
        json_ok = False
    try:
        chunked(body_bytes, sizes)
        scanned_ok = True
    except JsonError:
        scanned_ok = False
    event(f"accepted: {scanned_ok}")
    assert scanned_ok == orjson_ok, body_bytes
    assert scanned_ok <= json_ok or not orjson_ok  # never accepts what json.loads refuses


@pytest.mark.parametrize("body", [
    b'{"a":1,}', b'{"a":NaN}', b'{"a":Infinity}', b'{"a":1e400}', b'{"a":-1e400}',
    b'{"a":01}', b'{"a":1.}', b'{"a":.5}', b'{"a":"\\ud800"}', b'{"a":"\\udc00"}',
    b'{"a":"\\ud800\\u0041"}', b'{"a":"\xff"}', b'{"a":"\xed\xa0\x80"}', b'{"a":"\xc3"}',
    b'{"a":"\x1f"}', b'{"a":"\\x"}', b'{"a" 1}', b"{'a':1}", b'{"a":tru}', b'{} {}',
    b'\xef\xbb\xbf{}', b"", b"   ", b'{"a":[1,2,]}', b'{"a":{"b":1,}}', b'{"a"}', b"{",
    b'{"a":"x', b'{"a":"x\\', b'{"a":1' + b"1" * 400 + b"}",
])
def test_invalid_bodies_are_refused_like_orjson_refuses_them(body: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    for size in (1, 2, 3, 7, len(body) or 1):
        with pytest.raises(JsonError):
            chunked(body, [size])


@pytest.mark.parametrize("body", [b"[1, 2]", b'"model"', b"42", b"null"])
def test_a_top_level_value_that_is_not_an_object_is_named_so(body: bytes) -> None:
    with pytest.raises(NotAnObject):
        find_model(body)


@pytest.mark.parametrize(("body", "name"), [
    (b'{"x": {"model": "nested"}, "model": "top"}', "top"),
    (b'{"model": "first", "y": [{"model": "deep"}], "model": "last"}', "last"),
    (b'{"m\\u006fdel": "escaped key"}', "escaped key"),
    (b'{"model": "a", "m\\u006Fdel": "b"}', "b"),
    (b'{"t": "say \\"model\\": \\"x\\"", "model": "real"}', "real"),
    (b'{"k\\"model": 1, "model": "after a key ending in \\"model"}',
     'after a key ending in "model'),
    (b'{"model":"\\u00e9t\\u00e9 \\ud83d\\ude00"}', "\u00e9t\u00e9 \U0001f600"),
])
def test_the_top_level_model_wins_over_nested_and_earlier_ones(body: bytes, name: str) -> None:
    assert json.loads(body)["model"] == name
    found = find_model(body)
    assert found is not None and found.name == name
    assert locate_model(body, name) == found
    assert json.loads(body[found.start : found.end]) == name


@pytest.mark.parametrize("body", [b'{"model": 1}', b'{"model": "a", "model": null}',
                                  b'{"x": {"model": "nested only"}}', b"{}"])
def test_no_top_level_model_string_is_none(body: bytes) -> None:
    assert find_model(body) is None


def test_a_model_longer_than_1024_bytes_is_not_held() -> None:
    body = json.dumps({"model": "m" * 5000}).encode()
    found = find_model(body)
    assert found is not None and found.name is None and found.end - found.start == 5002


def test_nesting_is_allowed_to_orjsons_depth_and_refused_past_it() -> None:
    def nested(depth: int) -> bytes:
        return b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"

    orjson.loads(nested(MAX_DEPTH))
    find_model(nested(MAX_DEPTH))
    with pytest.raises(JsonError, match="nested deeper than 1024"):
        find_model(nested(MAX_DEPTH + 1))


def test_a_100000_deep_body_is_refused_at_once() -> None:
    body = b'{"model": "m", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    began = time.perf_counter()
    with pytest.raises(JsonError, match="nested deeper"):
        chunked(body, [1 << 16])
    assert time.perf_counter() - began < 1.0  # not a recursion: no stack to exhaust


@pytest.mark.parametrize("body", [
    b'{"n": 12345678, "f": -1.25e-3, "t": true, "f2": false, "z": null, "model": "m"}',
    '{"s": "\u00e9\u6f22\U0001f600", "e": "\\u00e9\\ud83d\\ude00\\n\\"\\\\", "model": "m"}'
    .encode(),
])
def test_every_split_point_gives_the_same_answer(body: bytes) -> None:
    whole = find_model(body)
    for split in range(len(body) + 1):
        finder = ModelFinder()
        scanner = JsonScanner(ROOT, finder)
        scanner.feed(body[:split])
        scanner.feed(body[split:])
        scanner.close()
        assert finder.value == whole, split


class Recorder:
    """A listener that records what a scan reports."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []
        self.strings: list[bytes] = []

    def key(self, role: Role, name: str) -> None:
        self.events.append(("key", role.name, name))

    def open(self, role: Role, kind: JsonKind, offset: int) -> None:
        self.events.append(("open", role.name, kind, offset))
        if kind is JsonKind.STRING:
            self.strings.append(b"")

    def data(self, raw: bytes) -> None:
        self.strings[-1] += raw

    def close(self, role: Role, kind: JsonKind, end: int) -> None:
        self.events.append(("close", role.name, kind, end))

    def scalar(self, role: Role, kind: JsonKind, offset: int, token: bytes) -> None:
        self.events.append(("scalar", role.name, kind, token))


def test_only_the_named_paths_are_reported_and_long_strings_arrive_whole() -> None:
    text = "x\\\"\u00e9" * 50_000
    body = json.dumps({"a": {"text": "no"}, "items": [{"text": text}, {"other": "no"}, 7],
                       "n": 5, "skip": [[1, 2], {"text": "no"}]}, ensure_ascii=False).encode()
    item = Role("item", keys={"text": Role("text", strings=True)})
    root = Role("root", keys={"items": Role("items", items=item),
                              "n": Role("n", scalars=True)})
    recorder = Recorder()
    scanner = JsonScanner(root, recorder)
    for at in range(0, len(body), 4096):
        scanner.feed(body[at : at + 4096])
    scanner.close()
    assert [json.loads(b'"' + s + b'"') for s in recorder.strings] == [text]
    assert [e for e in recorder.events if e[0] in ("key", "scalar")] == [
        ("key", "root", "items"), ("key", "item", "text"), ("key", "root", "n"),
        ("scalar", "n", JsonKind.NUMBER, b"5")]


@settings(max_examples=300)
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=40), st.booleans())
def test_a_safe_cut_never_splits_an_escape_a_pair_or_a_character(text: str,
                                                                  ascii_only: bool) -> None:
    raw = json.dumps(text, ensure_ascii=ascii_only)[1:-1].encode()
    for hi in range(len(raw) + 1):
        cut = safe_cut(raw, 0, hi)
        assert hi - 16 <= cut <= hi
        head = orjson.loads(b'"' + raw[:cut] + b'"')
        tail = orjson.loads(b'"' + raw[cut:] + b'"')
        assert head + tail == text
