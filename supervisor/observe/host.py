"""What the host has left: MemAvailable, read by the weights prefetch (not to read ahead
more than fits in the page cache) and the host RAM budget of level-1 sleepers."""

from __future__ import annotations

from pathlib import Path


def mem_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes the kernel says are available without swapping (blocking: a file read);
    None where it cannot tell."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
