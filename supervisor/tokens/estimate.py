"""How many tokens of context a request needs: prompt + requested output.

With the model's own `tokenizer.json` the text count is exact (the chat
template's overhead is covered by `reserved_tokens`). Without it the count is
a deliberate over-estimate for ordinary text: letters and spaces count one
token per 3 characters (common BPE vocabularies average ~4), digits and
punctuation one token each (many tokenizers split digits), any other character
(CJK, accents) one token, and never fewer tokens than words. Audio counts
`duration x tokens_per_audio_second`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tokenizers import Tokenizer

from supervisor.config import ModelConfig
from supervisor.tokens.audio import HEAD_BYTES, duration_seconds

log = logging.getLogger(__name__)

_LETTERS = re.compile(r"[A-Za-z\s]")
_WORDS = re.compile(r"\S+")

Counter = Callable[[str], int]


def heuristic_tokens(text: str) -> int:
    """A tokenizer-free count that over-estimates ordinary text (see the module docstring)."""
    if not text:
        return 0
    letters = len(_LETTERS.findall(text))
    ascii_other = len(text.encode("ascii", "ignore")) - letters
    non_ascii = len(text) - letters - ascii_other
    return max(len(_WORDS.findall(text)), math.ceil(letters / 3) + ascii_other + non_ascii)


@dataclass(slots=True)
class RequestNeed:
    """What a request needs of a profile; `tokens` is the figure routing compares."""

    prompt_tokens: int = 0
    output_tokens: int = 0
    reserved_tokens: int = 0
    audio_seconds: float = 0.0
    audio_tokens: int = 0
    exact_text: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.audio_tokens + self.output_tokens + self.reserved_tokens


@dataclass(frozen=True, slots=True)
class Estimator:
    count: Counter | None
    reserved_tokens: int
    tokens_per_audio_second: float
    default_output_tokens: int

    def for_json(self, payload: dict[str, Any]) -> RequestNeed:
        texts, audio = _texts_and_audio(payload)
        need = self._base(payload)
        count = self.count or heuristic_tokens
        need.prompt_tokens = sum(count(t) for t in texts)
        for clip in audio:
            self._add_audio(need, *_decode_head(clip))
        return need

    def for_upload(self, head: bytes, total_size: int | None) -> RequestNeed:
        """A multipart upload, from its file's first bytes (form fields are not parsed)."""
        need = self._base({})
        if head:
            self._add_audio(need, head, total_size)
        return need

    def _base(self, payload: dict[str, Any]) -> RequestNeed:
        output = _int(payload.get("max_completion_tokens")) or _int(payload.get("max_tokens"))
        return RequestNeed(
            output_tokens=output if output is not None else self.default_output_tokens,
            reserved_tokens=self.reserved_tokens,
            exact_text=self.count is not None,
        )

    def _add_audio(self, need: RequestNeed, head: bytes, total_size: int | None) -> None:
        seconds = duration_seconds(head, total_size)
        if seconds is None:
            need.notes.append("an audio clip of unknown duration was not counted")
            return
        need.audio_seconds += seconds
        need.audio_tokens += math.ceil(seconds * self.tokens_per_audio_second)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _texts_and_audio(payload: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Text and base64 audio of chat messages, a completion prompt, or embedding inputs."""
    texts: list[str] = []
    audio: list[str] = []
    for message in payload.get("messages") or []:
        if isinstance(message, dict):
            _collect(message.get("content"), texts, audio)
    for key in ("prompt", "input"):
        _collect(payload.get(key), texts, audio)
    return texts, audio


def _collect(content: object, texts: list[str], audio: list[str]) -> None:
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                _collect_part(part, texts, audio)


def _collect_part(part: dict[str, Any], texts: list[str], audio: list[str]) -> None:
    if isinstance(part.get("text"), str):
        texts.append(part["text"])
    clip = part.get("input_audio")
    if isinstance(clip, dict) and isinstance(clip.get("data"), str):
        audio.append(clip["data"])


def _decode_head(data: str) -> tuple[bytes, int]:
    """The first bytes of base64 audio, and its decoded size, without decoding all of it."""
    size = len(data) * 3 // 4 - data[-2:].count("=")
    prefix = data[: (HEAD_BYTES // 3) * 4]
    try:
        return base64.b64decode(prefix, validate=False), size
    except (binascii.Error, ValueError):
        log.warning("input_audio data is not valid base64; counting it as unknown")
        return b"", size


def describe(need: RequestNeed) -> str:
    """The estimate in words, for refusal messages."""
    approx = "" if need.exact_text else "~"
    parts = [f"{approx}{need.prompt_tokens} prompt"]
    if need.audio_tokens:
        parts.append(f"{need.audio_tokens} audio ({need.audio_seconds:.0f} s)")
    parts.append(f"{need.output_tokens} output")
    if need.reserved_tokens:
        parts.append(f"{need.reserved_tokens} reserved")
    return f"{need.tokens} tokens ({' + '.join(parts)})"


def load_estimator(model: ModelConfig) -> Estimator | None:
    """The model's estimator, or None when no profile states a limit (nothing to route on)."""
    if all(p.max_model_len is None for p in model.profiles.values()):
        return None
    count: Counter | None = None
    path = model.model_dir / "tokenizer.json" if model.model_dir else None
    if path is not None and path.is_file():
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # a broken file must not stop the supervisor
            log.warning("cannot load %s (%s); estimating tokens without it", path, exc)
        else:
            def count(text: str) -> int:
                return len(tokenizer.encode(text, add_special_tokens=False).ids)
    elif path is not None:
        log.warning("%s not found; estimating tokens without a tokenizer", path)
    return Estimator(count, model.reserved_tokens, model.tokens_per_audio_second,
                     model.default_output_tokens)
