"""The warm-up request: a JSON body as configured, or for a transcription model a
multipart form with a generated silent WAV (`{audio_seconds: N, ...}`)."""

from __future__ import annotations

import io
import wave
from typing import Any

import aiohttp

from supervisor.config import WarmupConfig

SAMPLE_RATE = 16_000
HEADER = "X-Supervisor-Warmup"  # lets a server (and the stand-in's tests) tell it apart


def silent_wav(seconds: float) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(b"\0\0" * int(SAMPLE_RATE * seconds))
    return out.getvalue()


def payload(warmup: WarmupConfig, served_name: str) -> dict[str, Any]:
    """What to send: `data` (a form) or `json`; the model is the served name by default."""
    body = {"model": served_name, **warmup.body}
    seconds = body.pop("audio_seconds", None)
    if seconds is None:
        return {"json": body}
    form = aiohttp.FormData()
    form.add_field("file", silent_wav(float(seconds)), filename="warmup.wav",
                   content_type="audio/wav")
    for key, value in body.items():
        form.add_field(key, str(value))
    return {"data": form}


async def send(session: aiohttp.ClientSession, upstream: str, warmup: WarmupConfig,
               served_name: str, headers: dict[str, str]) -> None:
    """Raise on a failure (no answer, or not 2xx within the warm-up's timeout)."""
    async with session.post(upstream + warmup.path, headers={**headers, HEADER: "true"},
                            timeout=aiohttp.ClientTimeout(total=warmup.timeout),
                            **payload(warmup, served_name)) as resp:
        body = await resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"answered {resp.status}: {body[:300].decode(errors='replace')}")
