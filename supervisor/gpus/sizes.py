"""Byte sizes as people read them in messages (GiB, as nvidia-smi and vLLM print them)."""

from __future__ import annotations

GIB = 1 << 30


def gib(n: int) -> str:
    """'20 GiB', '2.89 GiB': two decimals at most, as vLLM's own messages round them."""
    return f"{round(n / GIB, 2):g} GiB"
