"""The tokenizer-free estimate against real models' own tokenizers: on ordinary text it
must never count more than 10 % fewer tokens than the model does."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from supervisor.tokens.estimate import heuristic_tokens
from tests.helpers import unavailable

from .conftest import REPO

MODELS = REPO / ".cache" / "models"
PROSE = (
    "Operators run big speech and language models with vLLM in Docker on a few GPUs. An idle "
    "vLLM keeps all its memory forever: 152 GB of 184 GB in one report. The supervisor is a "
    "transparent proxy that starts the model's container on the first request, holds that "
    "request until the server is ready, and stops it again after some idle minutes, so that "
    "the memory is given back. Clients use their ordinary OpenAI libraries and should not "
    "notice it, except that a cold model answers late instead of failing. "
)
TEXTS = {
    "english prose": PROSE * 10,
    "markdown documentation": (REPO / "README.md").read_text(),
    "python source": (REPO / "supervisor" / "lifecycle" / "handle.py").read_text(),
    "a chat turn": "Can you summarise the meeting notes below in three bullet points?\n" * 20,
}


@pytest.fixture(params=["smollm2-135m-instruct", "all-minilm-l6-v2"])
def tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    path = MODELS / request.param / "tokenizer.json"
    if not path.is_file():
        unavailable(f"the {request.param} tokenizer", f"{path} is missing: run "
                    "scripts/prepare-vllm.sh")
    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()
    return tok


@pytest.mark.parametrize("kind", list(TEXTS))
def test_heuristic_never_undercounts_ordinary_text_by_more_than_10_percent(
    tokenizer: Tokenizer, kind: str
) -> None:
    text = TEXTS[kind]
    exact = len(tokenizer.encode(text, add_special_tokens=False).ids)
    assert heuristic_tokens(text) >= 0.9 * exact, (kind, heuristic_tokens(text), exact)

