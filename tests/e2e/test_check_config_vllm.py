"""check-config on the real model's config.json (seed 001's lesson)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import ENV_FILE, REPO, SMOL_DIR, models


def test_check_config_rejects_a_16k_profile_of_an_8k_model(tmp_path: Path) -> None:
    config = {
        "compose": {"file": str(REPO / "compose" / "vllm-cpu.yml"),
                    "project": "e2echeck",
                    "env_file": str(ENV_FILE)},
        "models": models(),
    }
    config["models"]["smollm2"]["model_dir"] = str(SMOL_DIR)
    config["models"]["smollm2"]["profiles"]["smol-16k"] = {
        "service": "smol-8k", "max_model_len": 16384}
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    done = subprocess.run([sys.executable, "-m", "supervisor", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert ("models.smollm2.profiles.smol-16k.max_model_len: 16384 exceeds what the model "
            "supports: max_position_embeddings 8192") in done.stderr
