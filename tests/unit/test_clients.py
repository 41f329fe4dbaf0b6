"""Named clients as tables: scope, the token bucket and the slots, Retry-After, keys,
the config's errors and a reload that keeps what a client used."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.clients.limits import Slots, TokenBucket, retry_after
from supervisor.clients.table import Client, build_clients
from supervisor.config import Config, ConfigError


def config(**extra: object) -> Config:
    return Config.model_validate({
        "compose": {"file": "x.yml", "project": "p"},
        "models": {"chat": {"service": "c", "upstream": "http://127.0.0.1:1",
                            "aliases": ["chat-v2"]},
                   "embed": {"service": "e", "upstream": "http://127.0.0.1:2"}},
        **extra,
    })


@pytest.mark.parametrize(
    ("models", "model", "allowed"),
    [(None, "chat", True), (None, "embed", True), (["chat"], "chat", True),
     (["chat"], "embed", False), (["chat-v2"], "chat", True), (["chat-v2"], "embed", False),
     ([], "chat", False)],
)
def test_scope_by_name_or_alias(monkeypatch: pytest.MonkeyPatch, models: list[str] | None,
                                model: str, allowed: bool) -> None:
    monkeypatch.setenv("ALICE_KEY", "alice-secret")
    clients = build_clients(config(clients={"alice": {"key_env": "ALICE_KEY", "models": models}}))
    alice = clients.identify("Bearer alice-secret")
    assert alice is not None and alice.name == "alice"
    refusal = alice.admit(model, 0.0)
    assert (refusal is None) == allowed
    if refusal is not None:
        assert (refusal.status, refusal.code) == (403, "model_not_allowed")
        assert "alice-secret" not in refusal.message


@pytest.mark.parametrize(
    ("per_minute", "asks_at", "waits"),
    [
        # a minute's worth at once, then one every 60/per_minute seconds
        (3, [0, 0, 0, 0], [0, 0, 0, 20.0]),
        (3, [0, 0, 0, 10], [0, 0, 0, 10.0]),
        (3, [0, 0, 0, 20], [0, 0, 0, 0]),
        (60, [0] * 60 + [0.5], [0] * 60 + [0.5]),
        # a refusal spends nothing: asking again at the given time succeeds
        (6, [0] * 6 + [0, 10], [0] * 6 + [10.0, 0]),
        # it never saves more than a minute's worth
        (2, [0, 0, 600, 600, 600], [0, 0, 0, 0, 30.0]),
    ],
)
def test_token_bucket(per_minute: int, asks_at: list[float], waits: list[float]) -> None:
    bucket = TokenBucket(per_minute, 0.0)
    assert [pytest.approx(bucket.take(t)) for t in asks_at] == waits


@pytest.mark.parametrize(("seconds", "header"), [(0.01, 1), (1.0, 1), (1.2, 2), (20.0, 20)])
def test_retry_after_is_never_shorter_than_the_wait(seconds: float, header: int) -> None:
    assert retry_after(seconds) == header


def test_slots_estimate_from_the_mean_duration_less_the_oldest_age() -> None:
    slots = Slots(2)
    assert slots.take(0.0) == 0.0 and slots.take(1.0) == 0.0
    assert slots.take(1.5) == 1.0  # nothing measured yet: a short guess
    slots.give(0.0, 4.0)  # took 4 s
    assert slots.take(4.0) == 0.0  # the freed slot
    assert slots.take(4.0) == pytest.approx(1.0)  # mean 4 s, oldest (began 1.0) 3 s old
    assert slots.take(4.9) == pytest.approx(0.5)  # never "now": at least SLOT_FLOOR
    slots.give(1.0, 5.0)
    assert slots.take(5.0) == 0.0


def test_limits_answer_429_with_a_true_retry_after() -> None:
    client = Client("bot", per_minute=2, concurrent=1)
    assert client.admit("chat", 0.0) is None
    busy = client.admit("chat", 1.0)  # one under way: the slot, and its token given back
    assert busy is not None and (busy.status, busy.code) == (429, "rate_limited")
    client.done(0.0, 2.0)
    assert client.admit("chat", 2.0) is None
    client.done(2.0, 2.5)
    over = client.admit("chat", 3.0)  # two in the minute
    assert over is not None and over.code == "rate_limited"
    assert over.retry_after == 27  # a token every 30 s; 3 s of one refilled at t=3
    assert client.admit("chat", 30.0) is None


def test_a_request_handed_to_the_other_path_spends_nothing() -> None:
    client = Client("bot", per_minute=1, concurrent=1)
    assert client.admit("chat", 0.0) is None
    client.done(0.0, 0.0, served=False)
    assert client.admit("chat", 0.0) is None


def test_keys_identify_clients_and_plain_keys_are_anonymous(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "bob.keys").write_text("# bob's two keys\nbob-1\nbob-2\n")
    monkeypatch.setenv("ALICE_KEY", "alice-secret")
    clients = build_clients(config(
        client_auth={"keys": ["plain"]},
        clients={"alice": {"key_env": "ALICE_KEY"}, "bob": {"key_file": tmp_path / "bob.keys"}}))
    found = {h: getattr(clients.identify(h), "name", None) for h in (
        "Bearer alice-secret", "bearer bob-1", "Bearer bob-2", b"Bearer plain", "Bearer nope",
        "alice-secret", None, "Bearer ")}
    assert found == {"Bearer alice-secret": "alice", "bearer bob-1": "bob", "Bearer bob-2": "bob",
                     b"Bearer plain": "anonymous", "Bearer nope": None, "alice-secret": None,
                     None: None, "Bearer ": None}
    assert "alice-secret" not in repr(clients) and "bob-1" not in repr(clients)


def test_without_keys_everyone_is_anonymous() -> None:
    clients = build_clients(config())
    assert clients.identify(None) is clients.anonymous
    assert clients.identify("Bearer anything") is clients.anonymous


@pytest.mark.parametrize(
    ("clients", "problem"),
    [
        ({"a": {"models": ["chat"]}}, r"clients\.a\.key_file: give exactly one"),
        ({"a": {"key_env": "X", "key_file": "f"}}, r"clients\.a\.key_file: give exactly one"),
        ({"a": {"key_env": "X", "models": ["nope"]}}, r"clients\.a\.models: 'nope' is not"),
        ({"a": {"key_env": "X", "max_concurrent": 0}}, r"clients\.a\.max_concurrent"),
        ({"a": {"key_env": "X", "requests_per_minute": 0}}, r"clients\.a\.requests_per_minute"),
        ({"a": {"key_env": "X", "rate": 1}}, r"clients\.a\.rate: unknown key"),
        ({"anonymous": {"key_env": "X"}}, r"clients\.anonymous: the name is reserved"),
        ({"a b": {"key_env": "X"}}, r"clients\.a b"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, clients: dict[str, object],
                                    problem: str) -> None:
    import yaml

    from supervisor.config import load_config
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "compose": {"file": "x.yml", "project": "p"},
        "models": {"chat": {"service": "c", "upstream": "http://127.0.0.1:1"}},
        "clients": clients}))
    with pytest.raises(ConfigError, match=problem):
        load_config(path)


def test_keys_that_cannot_be_read_or_are_shared_refuse_the_config(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOPE", raising=False)
    with pytest.raises(ConfigError, match=r"clients\.a\.key_env: NOPE is not set"):
        build_clients(config(clients={"a": {"key_env": "NOPE"}}))
    with pytest.raises(ConfigError, match=r"clients\.a\.key_file: cannot read"):
        build_clients(config(clients={"a": {"key_file": tmp_path / "missing"}}))
    monkeypatch.setenv("K1", "same")
    monkeypatch.setenv("K2", "same")
    with pytest.raises(ConfigError, match=r"clients\.b: a key of it is also the key of 'a'") as e:
        build_clients(config(clients={"a": {"key_env": "K1"}, "b": {"key_env": "K2"}}))
    assert "same" not in str(e.value)


def test_a_reload_keeps_what_a_client_used_and_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K", "key")
    old = build_clients(config(clients={"a": {"key_env": "K", "requests_per_minute": 2,
                                              "max_concurrent": 1}}))
    a = old.named["a"]
    a.used("chat").requests = 3
    assert a.admit("chat", a.bucket.stamp if a.bucket else 0.0) is None
    new = build_clients(config(clients={"a": {"key_env": "K", "requests_per_minute": 4,
                                              "max_concurrent": 1}}), old)
    b = new.named["a"]
    assert b.used("chat").requests == 3
    assert b.slots is not None and len(b.slots.running) == 1  # still under way
    assert b.bucket is not None and b.bucket.tokens == pytest.approx(3.0, abs=0.01)
