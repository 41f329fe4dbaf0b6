"""The status page: one HTML file with its script and style inline (no build step, no
CDN), served at `/` of the admin listener without a token, since it is where the token
is typed. Every call it makes carries the token; its Content-Security-Policy allows
exactly its own inline script and style (by hash) and calls to this origin.

When the admin API needs no token, the page comes with its first state (models, events,
GPUs) in a JSON data block, so that it shows the models at once instead of after its
first fetch; with a token, the page holds nothing an anonymous reader could not see."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from supervisor.ops.control import CONTROL
from supervisor.ops.gpus import gpu_view

if TYPE_CHECKING:
    from supervisor.ops.control import Control

PAGE = "status_page.html"
FIRST_STATE = '<script type="application/json" id="first-state">null</script>'
FIRST_EVENTS = 100  # as many as the page asks for when it has no first state


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def content_security_policy(html: str) -> str:
    # Only executable inline scripts (`<script>`) count; the JSON data block is not run.
    scripts = [_sha256(s) for s in re.findall(r"<script>(.*?)</script>", html, re.S)]
    styles = [_sha256(s) for s in re.findall(r"<style>(.*?)</style>", html, re.S)]
    return "; ".join([
        "default-src 'none'",
        f"script-src {' '.join(scripts)}",
        f"style-src {' '.join(styles)}",
        "connect-src 'self'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])


@cache
def _page() -> tuple[str, str]:
    html = resources.files("supervisor.ops").joinpath(PAGE).read_text(encoding="utf-8")
    return html, content_security_policy(html)


def first_state(control: Control) -> dict[str, Any]:
    """What the page would fetch first: `/admin/models`, the last events, `/admin/gpus`."""
    return {**control.models(), "events": control.metrics.events.recent(FIRST_EVENTS),
            "gpus": gpu_view(control.metrics.registry)}


def render(html: str, state: dict[str, Any] | None) -> str:
    """The page with `state` in its data block; `<`, `>` and `&` escaped, so no string in
    it (a model's last error, say) can end the block or open a tag."""
    data = json.dumps(state, separators=(",", ":"))
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return html.replace(FIRST_STATE, FIRST_STATE.replace(">null<", f">{data}<"), 1)


async def status_page(request: web.Request) -> web.Response:
    html, csp = _page()
    control = request.app[CONTROL]
    state = None if control.admin_secrets else first_state(control)
    return web.Response(text=render(html, state), content_type="text/html", charset="utf-8",
                        headers={
                            "Content-Security-Policy": csp,
                            "Cache-Control": "no-store",
                            "Referrer-Policy": "no-referrer",
                            "X-Content-Type-Options": "nosniff",
                            "X-Frame-Options": "DENY",
                        })
