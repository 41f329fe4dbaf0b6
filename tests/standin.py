"""The stand-in servers' own code (compose/standin/), for tests that use it directly."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

STANDIN = Path(__file__).resolve().parents[1] / "compose" / "standin"


def load_ledger() -> ModuleType:
    """compose/standin/gpu_ledger.py: the file that plays a GPU's memory."""
    spec = importlib.util.spec_from_file_location("gpu_ledger", STANDIN / "gpu_ledger.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
