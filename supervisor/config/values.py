"""Values as operators write them (durations, byte sizes, URLs, listen addresses, GPU
lists, cron lines, time zones), parsed and checked once."""

from __future__ import annotations

import re
import zoneinfo
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
)

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from `90s`, `10m`, `1h`, `1h30m`, `250ms` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 10m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(
                    f"invalid duration {value!r}: use e.g. 90s, 10m, 1h or 1h30m"
                ) from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise ValueError("expected a duration such as 90s, 10m or 1h")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]

_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)")
_UNIT_BYTES = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def parse_bytes(value: object) -> int:
    """Bytes from `24GiB`, `512MiB`, `3.1GB`, `1.5TB` or a bare number of bytes.

    GB/MB are decimal and GiB/MiB binary, as nvidia-smi's MiB and a vendor's "GB"
    differ by 7 %; a bare `24G` is refused rather than guessed.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as 24GiB, 512MiB or 3.1GB")
    if isinstance(value, int | float):
        amount, unit = float(value), ""
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip().lower())
        if match is None or match.group(2) not in _UNIT_BYTES:
            raise ValueError(
                f"invalid size {value!r}: use e.g. 24GiB, 512MiB, 3.1GB, 1.5TB or bytes"
            )
        amount, unit = float(match.group(1)), match.group(2)
    else:
        raise ValueError("expected a size such as 24GiB, 512MiB or 3.1GB")
    if amount < 0:
        raise ValueError(f"a size cannot be negative: {value!r}")
    return round(amount * _UNIT_BYTES[unit])


def _unique_gpus(value: list[int]) -> list[int]:
    if len(set(value)) != len(value):
        raise ValueError(f"a GPU is named twice in {value}")
    return value


ByteSize = Annotated[int, BeforeValidator(parse_bytes)]
PositiveByteSize = Annotated[int, BeforeValidator(parse_bytes), Field(gt=0)]
GpuIndices = Annotated[list[Annotated[int, Field(ge=0)]], AfterValidator(_unique_gpus)]


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL with a host")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"{value!r} has an invalid port") from exc
    return value.rstrip("/")


def host_port(listen: str) -> tuple[str, int]:
    """('127.0.0.1', 8080) from '127.0.0.1:8080'; ('::1', 8080) from '[::1]:8080'."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{listen!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _check_listen(value: str) -> str:
    host_port(value)
    return value


def _check_cron(value: object) -> str:
    from apscheduler.triggers.cron import CronTrigger  # slow import, only with schedules

    if not isinstance(value, str):
        raise ValueError("expected a cron expression such as '45 8 * * mon-fri'")
    try:
        CronTrigger.from_crontab(value, timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
    return value


def _check_timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use e.g. UTC or Europe/Berlin)") from None
    return value


UpstreamUrl = Annotated[str, BeforeValidator(str), BeforeValidator(_check_url)]
ListenAddress = Annotated[str, BeforeValidator(_check_listen)]
Cron = Annotated[str, BeforeValidator(_check_cron)]
TimeZone = Annotated[str, BeforeValidator(_check_timezone)]
