"""The warm-up request's body: JSON as configured, or a form with a silent WAV."""

from __future__ import annotations

import io
import wave

import aiohttp

from supervisor.config import WarmupConfig
from supervisor.lifecycle.warmup import payload, silent_wav


def test_a_json_warmup_names_the_served_model_unless_its_body_does() -> None:
    chat = WarmupConfig(body={"messages": [{"role": "user", "content": "hi"}]})
    assert payload(chat, "smollm2") == {
        "json": {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}}
    named = WarmupConfig(body={"model": "other", "prompt": "x"})
    assert payload(named, "smollm2")["json"]["model"] == "other"


def test_an_audio_warmup_is_a_form_with_a_silent_wav_of_that_length() -> None:
    audio = WarmupConfig(path="/v1/audio/transcriptions",
                         body={"audio_seconds": 1.5, "language": "en"})
    form = payload(audio, "whisper")["data"]
    assert isinstance(form, aiohttp.FormData)
    fields = {f[0]["name"]: f for f in form._fields}
    assert set(fields) == {"file", "model", "language"}
    assert fields["model"][2] == "whisper" and fields["language"][2] == "en"
    with wave.open(io.BytesIO(fields["file"][2])) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        assert wav.getnframes() / wav.getframerate() == 1.5


def test_the_silent_wav_is_silent() -> None:
    with wave.open(io.BytesIO(silent_wav(0.25))) as wav:
        assert set(wav.readframes(wav.getnframes())) == {0}
