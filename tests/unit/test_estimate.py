"""What a request needs: text with and without a tokenizer, audio of known length."""

from __future__ import annotations

import base64
import io
import wave
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from supervisor.config import ModelConfig
from supervisor.tokens.audio import duration_seconds
from supervisor.tokens.estimate import Estimator, heuristic_tokens, load_estimator

DATA = Path(__file__).parent / "data"
PROSE = (
    "Operators run big speech and language models with vLLM in Docker on a few GPUs. "
    "An idle server keeps all of its memory forever, so the supervisor stops it after a "
    "while and starts it again on the next request. "
) * 20


def wav_bytes(seconds: float, rate: int = 16000, channels: int = 1) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(seconds * rate) * channels)
    return out.getvalue()


def model(tmp_path: Path | None = None, **extra: object) -> ModelConfig:
    raw = {
        "upstream": "http://127.0.0.1:1",
        "default_profile": "short",
        "profiles": {"short": {"service": "s", "max_model_len": 2048},
                     "long": {"service": "l", "max_model_len": 8192}},
        "model_dir": tmp_path,
        **extra,
    }
    return ModelConfig.model_validate(raw)


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    """A real tokenizer.json, trained here by the tokenizers library."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([PROSE], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


def test_text_is_counted_exactly_with_the_models_tokenizer(tokenizer_dir: Path) -> None:
    estimator = load_estimator(model(tokenizer_dir, reserved_tokens=100))
    assert estimator is not None and estimator.count is not None
    expected = len(Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).encode(PROSE).ids)
    need = estimator.for_json({
        "model": "m", "max_tokens": 50,
        "messages": [{"role": "system", "content": PROSE[:200]},
                     {"role": "user", "content": [{"type": "text", "text": PROSE[200:]}]}],
    })
    assert need.exact_text
    assert need.prompt_tokens == pytest.approx(expected, abs=2)  # split at 200 chars
    assert need.tokens == need.prompt_tokens + 50 + 100


def test_without_a_tokenizer_the_estimate_errs_high_on_ordinary_text(tmp_path: Path) -> None:
    estimator = load_estimator(model(tmp_path))  # model_dir has no tokenizer.json
    assert estimator is not None and estimator.count is None
    need = estimator.for_json({"model": "m", "prompt": PROSE, "max_completion_tokens": 10})
    words = len(PROSE.split())
    assert not need.exact_text
    assert need.prompt_tokens >= 1.2 * words  # English averages ~1.3 BPE tokens per word
    assert need.output_tokens == 10


@pytest.mark.parametrize(
    ("text", "at_least"),
    [("", 0), ("hello", 2), ("a " * 100, 100), ("1234567890", 10), ("数据中心的显存", 7),
     ('{"a": [1, 2]}', 9)],
)
def test_heuristic_floor(text: str, at_least: int) -> None:
    assert heuristic_tokens(text) >= at_least


def test_missing_fields_use_the_defaults() -> None:
    estimator = load_estimator(model(default_output_tokens=300))
    assert estimator is not None
    need = estimator.for_json({"model": "m"})
    assert (need.prompt_tokens, need.output_tokens, need.audio_tokens) == (0, 300, 0)
    odd = estimator.for_json({"model": "m", "messages": "nope", "max_tokens": "many",
                              "prompt": [1, {"x": 2}]})
    assert odd.output_tokens == 300 and odd.prompt_tokens == 0


def test_model_without_limits_needs_no_estimate() -> None:
    plain = ModelConfig.model_validate({"service": "s", "upstream": "http://127.0.0.1:1"})
    assert load_estimator(plain) is None


@pytest.mark.parametrize("seconds", [1.0, 12.5, 300.0])
def test_wav_duration_is_exact_from_the_header(seconds: float) -> None:
    data = wav_bytes(seconds)
    assert duration_seconds(data[:4096], len(data)) == pytest.approx(seconds)


def test_stereo_44k_wav() -> None:
    data = wav_bytes(2.0, rate=44100, channels=2)
    assert duration_seconds(data[:1024], len(data)) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("name", "seconds"),
    [("speech-3s.mp3", 3.1), ("speech-20s-cbr.mp3", 20.09), ("speech-3s.flac", 3.0),
     ("speech-3s.ogg", 3.0)],
)
def test_compressed_audio_duration(name: str, seconds: float) -> None:
    data = (DATA / name).read_bytes()
    assert duration_seconds(data, len(data)) == pytest.approx(seconds, rel=0.05)


@pytest.mark.parametrize("name", ["speech-20s-cbr.mp3", "speech-3s.flac"])
def test_compressed_duration_from_the_head_and_size_alone(name: str) -> None:
    data = (DATA / name).read_bytes()
    whole = duration_seconds(data, len(data))
    assert duration_seconds(data[:4096], len(data)) == pytest.approx(whole, rel=0.05)


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage" * 100, b"RIFF\x00\x00\x00\x00WAVEfmt ", wav_bytes(1.0)[:30],
     b"ID3\x04\x00\x00\x00\x00\x00\x10" + b"\xff" * 50, b"fLaC" + b"\x00" * 10],
)
def test_malformed_audio_falls_back_without_raising(data: bytes) -> None:
    assert duration_seconds(data, len(data) or None) is None


def test_input_audio_parts_count_duration_times_rate() -> None:
    estimator = load_estimator(model(tokens_per_audio_second=12.5, reserved_tokens=1500))
    assert estimator is not None
    clip = base64.b64encode(wav_bytes(60.0)).decode()
    need = estimator.for_json({
        "model": "m", "max_tokens": 100,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "transcribe"},
            {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}},
        ]}],
    })
    assert need.audio_seconds == pytest.approx(60.0)
    assert need.audio_tokens == 750
    assert need.tokens == need.prompt_tokens + 750 + 100 + 1500


def test_malformed_input_audio_is_noted_not_fatal() -> None:
    estimator = load_estimator(model())
    assert estimator is not None
    need = estimator.for_json({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "!!!not base64!!!"}}]}]})
    assert need.audio_tokens == 0
    assert need.notes == ["an audio clip of unknown duration was not counted"]


def test_the_head_of_a_big_wav_upload_is_enough() -> None:
    estimator = Estimator(None, 0, 12.5, 0)
    seconds = 4700.0  # a 150 MB, 78-minute 16 kHz mono recording
    header = wav_bytes(0.0)[:44]
    size = 44 + int(seconds * 16000) * 2
    head = header[:40] + (size - 44).to_bytes(4, "little") + b"\x00" * 65536
    need = estimator.for_upload(head, size)  # bench/estimate_bench.py times this
    assert need.audio_seconds == pytest.approx(seconds)
    assert need.audio_tokens == 58750
