"""`model-supervisor check-config` against the real `docker compose config`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import COMPOSE_FILE

REPO = Path(__file__).resolve().parents[2]


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", "check-config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )


def config_file(tmp_path: Path, compose_file: Path, service: str = "chat-fast") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"""
compose: {{file: {compose_file}, project: checkcfg}}
models:
  chat:
    service: {service}
    upstream: http://127.0.0.1:19101
""")
    return path


def test_shipped_configs_are_valid() -> None:
    for name in ["model-supervisor.example.yaml", "compose/demo-supervisor.yaml"]:
        done = check_config(REPO / name)
        assert done.returncode == 0, done.stderr
        assert "OK" in done.stdout


def test_a_service_missing_from_the_compose_file_is_named(tmp_path: Path) -> None:
    done = check_config(config_file(tmp_path, COMPOSE_FILE, service="chat-fats"))
    assert done.returncode == 1
    assert "models.chat.service: 'chat-fats' is not a service of" in done.stderr
    assert "chat-fast" in done.stderr  # the services it does have


def test_a_missing_compose_file_is_named(tmp_path: Path) -> None:
    done = check_config(config_file(tmp_path, tmp_path / "nope.yml"))
    assert done.returncode == 1
    assert "compose.file:" in done.stderr and "does not exist" in done.stderr


def test_a_compose_file_that_does_not_parse_is_reported(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("services:\n  chat-fast:\n    image: [\n")
    done = check_config(config_file(tmp_path, broken))
    assert done.returncode == 1
    assert "compose.file: docker compose cannot parse it" in done.stderr


def test_schema_errors_exit_1_with_key_paths(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"""
compose: {{file: {COMPOSE_FILE}, project: checkcfg}}
models:
  a: {{service: chat-fast, upstream: "http://127.0.0.1:1", idle_timeout: soon}}
  b: {{service: chat-slow, upstream: "http://127.0.0.1:2", aliases: [a]}}
""")
    done = check_config(path)
    assert done.returncode == 1
    assert "models.a.idle_timeout: invalid duration 'soon'" in done.stderr


def profiles_config(tmp_path: Path, rope_scaling: dict[str, object] | None) -> Path:
    """Seed 001: a long profile beyond the model's max_position_embeddings."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(
        {"max_position_embeddings": 8192, "rope_scaling": rope_scaling}
    ))
    path = tmp_path / "config.yaml"
    path.write_text(f"""
compose: {{file: {COMPOSE_FILE}, project: checkcfg}}
models:
  ctx:
    upstream: http://127.0.0.1:19105
    default_profile: short
    model_dir: model
    profiles:
      short: {{service: short-ctx, max_model_len: 2048}}
      long: {{service: long-ctx, max_model_len: 16384}}
""")
    return path


def test_a_profile_longer_than_the_model_supports_is_rejected(tmp_path: Path) -> None:
    done = check_config(profiles_config(tmp_path, None))
    assert done.returncode == 1
    assert ("models.ctx.profiles.long.max_model_len: 16384 exceeds what the model supports: "
            "max_position_embeddings 8192 = 8192") in done.stderr
    assert "profiles.short" not in done.stderr


def test_rope_scaling_extends_what_the_model_supports(tmp_path: Path) -> None:
    done = check_config(profiles_config(tmp_path, {"rope_type": "yarn", "factor": 2.0}))
    assert done.returncode == 0, done.stderr


def test_the_gpu_example_keeps_its_caches_on_volumes(tmp_path: Path) -> None:
    """The shipped example mounts vLLM's and the Hugging Face caches; the same file without
    those mounts (as it was before) is warned about, with the key paths, and still valid."""
    shipped = REPO / "compose/models.yml"
    config = tmp_path / "config.yaml"
    config.write_text((REPO / "model-supervisor.example.yaml").read_text()
                      .replace("compose/models.yml", str(tmp_path / "models.yml")))
    (tmp_path / "models.yml").write_text(shipped.read_text())
    done = check_config(config)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    before = "".join(line for line in shipped.read_text().splitlines(keepends=True)
                     if "-cache:/root/.cache/" not in line)
    (tmp_path / "models.yml").write_text(before)
    done = check_config(config)
    assert done.returncode == 0, done.stderr
    assert "OK (1 models, 2 warnings)" in done.stdout
    for cache in ("/root/.cache/vllm", "/root/.cache/huggingface"):
        assert ("warning: models.step-audio.service: " in done.stderr
                and f"({cache}) is inside the container of service 'step-audio-64k'"
                in done.stderr and "services.step-audio-64k.volumes" in done.stderr)
