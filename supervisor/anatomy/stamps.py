"""The time Docker stamps on each log line (`logs(timestamps=True)`): RFC 3339 with
nanoseconds, UTC. Read by hand: `datetime.fromisoformat` takes at most microseconds."""

from __future__ import annotations

import re
from datetime import datetime

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d) ?")


def split_stamp(line: str) -> tuple[float | None, str]:
    """(seconds since the epoch, the rest of the line); (None, line) when unstamped."""
    found = _STAMP.match(line)
    if found is None:
        return None, line
    whole, fraction, zone = found.groups()
    at = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    return at.timestamp() + float(f"0.{fraction or 0}"), line[found.end():]
