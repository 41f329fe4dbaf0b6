"""Auth, the state file and schedule windows: the pure parts of the admin features."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from supervisor.auth import Secrets, admin_secrets, admin_token, is_loopback, plain_keys
from supervisor.config import AdminConfig, ClientAuthConfig, Config, ConfigError
from supervisor.ops.schedule import ClockTrigger, WallClock, cron, window_open
from supervisor.root import build
from supervisor.state_file import StateFile, write_atomically

BERLIN = ZoneInfo("Europe/Berlin")
MODELS = {"m": {"service": "m", "upstream": "http://127.0.0.1:1"}}


def config(**kw: object) -> Config:
    return Config(compose={"file": "x.yml", "project": "p"}, models=MODELS, **kw)


def test_bearer_check() -> None:
    secrets = Secrets(["abc", "def"])
    assert secrets.allows("Bearer def") and secrets.allows("bearer abc")
    for header in (None, "", "Bearer", "Bearer ab", "Bearer abcd", "abc", "Basic abc"):
        assert not secrets.allows(header)
    assert not Secrets([]) and "abc" not in repr(secrets)


def test_admin_token_from_env_then_file_env_then_file(tmp_path, monkeypatch) -> None:
    (tmp_path / "t").write_text("from-file\n")
    (tmp_path / "u").write_text("from-env-file\n")
    admin = AdminConfig(token_env="MS_TOKEN", token_file=tmp_path / "t")
    monkeypatch.delenv("MS_TOKEN", raising=False)
    assert admin_token(admin) == "from-file"
    monkeypatch.setenv("MS_TOKEN_FILE", str(tmp_path / "u"))
    assert admin_token(admin) == "from-env-file"
    monkeypatch.setenv("MS_TOKEN", "from-env")
    assert admin_token(admin) == "from-env"


async def test_admin_on_a_network_address_needs_a_token(monkeypatch) -> None:
    monkeypatch.delenv("SUPERVISOR_ADMIN_TOKEN", raising=False)
    open_admin = config(admin={"listen": "0.0.0.0:8081"})
    with pytest.raises(ConfigError, match=r"admin\.listen: 0\.0\.0\.0:8081 is not a loopback"):
        await build(open_admin)  # before anything is made
    assert not admin_secrets(config())  # loopback: allowed without a token
    monkeypatch.setenv("SUPERVISOR_ADMIN_TOKEN", "tok")
    assert admin_secrets(open_admin).allows("Bearer tok")
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("example.org") and not is_loopback("10.0.0.1")


def test_client_keys_from_list_and_file(tmp_path) -> None:
    (tmp_path / "k").write_text("# comment\nk2  # trailing\n\nk3\n")
    keys = plain_keys(ClientAuthConfig(keys=["k1"], keys_file=tmp_path / "k"))
    assert keys == ["k1", "k2", "k3"]
    with pytest.raises(ConfigError, match=r"client_auth\.keys_file: cannot read"):
        plain_keys(ClientAuthConfig(keys_file=tmp_path / "missing"))


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="invalid cron expression"):
        config(schedules={"s": {"model": "m", "start": "61 * * * *", "end": "0 18 * * *"}})
    with pytest.raises(ValueError, match=r"schedules\.s\.model: 'x' is not a model"):
        config(schedules={"s": {"model": "x", "start": "0 8 * * *", "end": "0 18 * * *"}})
    with pytest.raises(ValueError, match="unknown time zone"):
        config(timezone="Mars/Base")
    with pytest.raises(ValueError, match="level"):
        Config(compose={"file": "x.yml", "project": "p"},
               models={"m": {**MODELS["m"], "sleep": {"enabled": True, "level": 3}}})


def test_state_file_round_trip_and_atomic_write(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "s.state.json"
    write_atomically(path, json.dumps({"version": 1, "models": {"m": {"pinned": True}}}))
    assert StateFile(path).load()["models"] == {"m": {"pinned": True}}
    assert [p.name for p in path.parent.iterdir()] == ["s.state.json"]  # no temp file left
    path.write_text("{half")
    assert StateFile(path).load() == {}  # unreadable: ignored (and logged)
    assert StateFile(None).load() == {}


async def test_state_file_save(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "s.json")
    await state.save({"models": {}})
    assert json.loads((tmp_path / "s.json").read_text()) == {"version": 1, "models": {}}


WEEKDAYS = (cron("45 8 * * mon-fri", BERLIN), cron("0 18 * * mon-fri", BERLIN))


@pytest.mark.parametrize(("when", "open_"), [
    (datetime(2026, 3, 2, 8, 44, 59), False),  # Monday, before
    (datetime(2026, 3, 2, 8, 45, 0), True),
    (datetime(2026, 3, 2, 12, 0), True),
    (datetime(2026, 3, 2, 17, 59, 59), True),
    (datetime(2026, 3, 2, 18, 0, 0), False),
    (datetime(2026, 3, 7, 12, 0), False),  # Saturday
    (datetime(2026, 3, 6, 17, 0), True),  # Friday
])
def test_window_open(when: datetime, open_: bool) -> None:
    assert window_open(*WEEKDAYS, when.replace(tzinfo=BERLIN)) is open_


def test_window_open_across_midnight() -> None:
    night = (cron("0 22 * * *", BERLIN), cron("0 6 * * *", BERLIN))
    assert window_open(*night, datetime(2026, 3, 2, 23, 0, tzinfo=BERLIN))
    assert window_open(*night, datetime(2026, 3, 3, 5, 0, tzinfo=BERLIN))
    assert not window_open(*night, datetime(2026, 3, 3, 12, 0, tzinfo=BERLIN))


def test_clock_trigger_maps_the_moved_clock_to_real_time() -> None:
    clock = WallClock()
    clock.set(datetime(2026, 3, 2, 8, 44, 50, tzinfo=BERLIN))
    trigger = ClockTrigger(WEEKDAYS[0], clock)
    real_now = datetime.now(BERLIN)
    fire = trigger.get_next_fire_time(None, real_now)
    assert fire is not None
    assert timedelta(seconds=9) <= fire - real_now <= timedelta(seconds=10, milliseconds=50)
