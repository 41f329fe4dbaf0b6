"""What each client used, per model: requests, seconds, tokens (from the answers' `usage`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Usage:
    requests: int = 0
    seconds: float = 0.0  # from the request to the end of its answer
    held_seconds: float = 0.0  # of which held: waiting for the model to be ready
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"requests": self.requests, "seconds": round(self.seconds, 3),
                "held_seconds": round(self.held_seconds, 3),
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens}
