"""check-config's warning for caches that die with their container: a vLLM server keeps
torch.compile's artifacts (VLLM_CACHE_ROOT) and downloads (the Hugging Face cache) under
its home unless told otherwise; when Compose recreates the container (its config
changed, an image was pulled, an operator ran `down`) the next start compiles and
captures graphs again from nothing (vllm#44881: compile 43 s -> 5 s with the cache kept).

Pure: it reads the service as `docker compose config --format json` resolved it.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

# vLLM's images run as root; a service that sets HOME says otherwise.
DEFAULT_HOME = "/root"
SURVIVING = ("volume", "bind")  # a tmpfs mount dies with the container, too


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE items (Compose resolves to a mapping; be lenient)
        env = dict(item.split("=", 1) for item in env if "=" in item)
    return {str(k): str(v) for k, v in env.items() if v is not None}


def cache_dirs(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, the variable that moves it, where it is inside the container) for vLLM's
    compile cache and the Hugging Face cache, as vLLM and huggingface_hub resolve them."""
    env = _env(service)
    home = env.get("HOME", DEFAULT_HOME)

    def path(value: str) -> str:
        return home + value[1:] if value.startswith("~") else value

    root = path(env.get("XDG_CACHE_HOME", f"{home}/.cache"))
    vllm = path(env.get("VLLM_CACHE_ROOT", f"{root}/vllm"))
    hf_var = "HF_HUB_CACHE" if "HF_HUB_CACHE" in env else "HF_HOME"
    hf = path(env.get(hf_var, f"{root}/huggingface"))
    return [("vLLM's compile cache", "VLLM_CACHE_ROOT", vllm),
            ("the Hugging Face cache", hf_var, hf)]


def mounted(service: dict[str, Any], where: str) -> bool:
    """Whether `where` is on a volume or bind mount (the mount's target or below it)."""
    inside = PurePosixPath(where)
    for volume in service.get("volumes") or ():
        if not isinstance(volume, dict) or volume.get("type") not in SURVIVING:
            continue
        target = PurePosixPath(str(volume.get("target", "")))
        if target.is_absolute() and (inside == target or target in inside.parents):
            return True
    return False


def runs_vllm(service: dict[str, Any]) -> bool:
    """Whether the service runs vLLM (its image, entrypoint or command says so): a model
    of server kind vllm may be served by a stand-in that keeps no cache."""
    said = [service.get("image"), service.get("entrypoint"), service.get("command")]
    return "vllm" in str(said).lower()


def cache_warnings(key: str, name: str, service: dict[str, Any]) -> list[str]:
    """'key: ...' lines, one per cache of the Compose service `name` kept inside its
    container; `key` is the config's key that names the service."""
    if not runs_vllm(service):
        return []
    return [
        f"{key}: {what} ({where}) is inside the container of service {name!r}: a "
        f"recreated container starts from nothing; mount a volume or bind mount there "
        f"(services.{name}.volumes) or set {variable} to a mounted path"
        for what, variable, where in cache_dirs(service) if not mounted(service, where)
    ]
