"""The status page: one HTML file with its script and style inline (no build step, no
CDN), served at `/` of the admin listener without a token, since it is where the token
is typed. Every call it makes carries the token; its Content-Security-Policy allows
exactly its own inline script and style (by hash) and calls to this origin."""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib import resources

from aiohttp import web

PAGE = "status_page.html"


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def content_security_policy(html: str) -> str:
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
def _page() -> tuple[bytes, str]:
    html = resources.files("supervisor.ops").joinpath(PAGE).read_text(encoding="utf-8")
    return html.encode(), content_security_policy(html)


async def status_page(request: web.Request) -> web.Response:
    body, csp = _page()
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers={
        "Content-Security-Policy": csp,
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
    })
