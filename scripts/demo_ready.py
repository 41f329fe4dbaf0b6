"""Wait until the demo's supervisor answers, then print where everything is: the proxy,
the admin API and its status page, whether they need a token, and after how long idle
each model's profiles are stopped. scripts/demo.sh runs it beside `model-supervisor serve`;
the addresses are the config's, with the same SUPERVISOR_* overrides the server reads.

    python scripts/demo_ready.py CONFIG SERVER_PID
exits 1 when the server exits (or does not answer within --timeout) first."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import urllib.error
import urllib.request

from supervisor.config import AdminConfig, Config, load_config
from supervisor.rules.profiles import idle_timeout, profiles_of


def status(url: str) -> int | None:
    """The HTTP status `url` answers with, or None when nothing answers yet."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_ready(proxy: str, admin: str, pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        if status(admin + "/healthz") == 200 and status(proxy + "/healthz") == 200:
            return True
        time.sleep(0.2)
    return False


def minutes(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def idle_line(config: Config) -> str:
    """'smollm2: 5 min on smol-2k, 2 min on smol-8k; minilm: 5 min'."""
    parts = []
    for name, model in config.models.items():
        profiles = profiles_of(model)
        if len(profiles) == 1:
            parts.append(f"{name}: {minutes(idle_timeout(model, profiles[0]))}")
        else:
            each = ", ".join(f"{minutes(idle_timeout(model, p))} on {p.name}" for p in profiles)
            parts.append(f"{name}: {each}")
    return "; ".join(parts)


def banner(config: Config, proxy: str, admin: str, token_needed: bool) -> str:
    token_env = config.admin.token_env
    token = (f"needed: the value of {token_env} (`Authorization: Bearer ...`; the page asks "
             "for it)" if token_needed else
             f"none needed: this demo runs the admin API without one ({token_env} is not "
             "set), which the supervisor allows on a loopback address only")
    cli = "model-supervisor status"
    if config.admin.listen != AdminConfig().listen:
        cli += f" --admin {admin}"
    return f"""
  Ready. Nothing runs yet: the first request for a model starts it.
    Proxy (OpenAI API)  {proxy}/v1
    Admin API           {admin}/admin/models  (CLI: {cli})
    Status page         {admin}/  (models, GPUs and lifecycle events, live)
    Admin token         {token}
    Idle stop           a model idle this long is stopped: {idle_line(config)}
"""


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C while waiting: no traceback
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("pid", type=int, help="the server's process: stop waiting if it ends")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    config = load_config(args.config)
    proxy, admin = f"http://{config.listen}", f"http://{config.admin.listen}"
    if not wait_ready(proxy, admin, args.pid, args.timeout):
        print(f"demo: the supervisor did not come up on {proxy} and {admin}", file=sys.stderr)
        return 1
    print(banner(config, proxy, admin, status(admin + "/admin/models") == 401), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
