#!/usr/bin/python3
"""Stand-in for an OpenAI-compatible model server (vLLM-like), stdlib only.

Integration tests and the demo run it inside a bare container that only has the host's
``/usr/bin/python3``, so nothing outside the standard library may be imported. It mimics the
parts of vLLM the supervisor cares about: a slow start before the port opens, crashes during
load, context-length errors, streaming, large multipart uploads, and WebSockets (a realtime
endpoint that echoes).
"""

from __future__ import annotations

import atexit
import base64
import collections
import hashlib
import json
import os
import re
import signal
import struct
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

READ_CHUNK = 1 << 20  # never hold more than this much of an upload at once
MAX_STREAM_CHUNKS = 2000
DEFAULT_STREAM_CHUNKS = 5
DEFAULT_MAX_TOKENS = 16  # what vLLM assumes for the context check when max_tokens is absent
REPLY = "stand-in reply"
_MODEL_FIELD = re.compile(rb'[;\s]name="?model"?[;\r\n]')
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3


class BadBody(Exception):
    """The request body could not be framed; the connection cannot be reused."""


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else None


class Config:
    """Settings read once from the environment (the container's only configuration channel)."""

    def __init__(self) -> None:
        self.host = os.environ.get("STANDIN_HOST", "127.0.0.1")
        port = _env_int("STANDIN_PORT")
        if port is None:
            raise SystemExit("standin: STANDIN_PORT is required")
        self.port = port
        self.model = os.environ.get("STANDIN_MODEL", "standin")
        self.startup_delay = float(os.environ.get("STANDIN_STARTUP_DELAY", "0") or 0)
        # A file of "<seconds> <line>": printed while loading, as a real server logs its
        # phases (weights, compile, ...) before it opens its port.
        self.log_script = os.environ.get("STANDIN_LOG_SCRIPT", "")
        self.exit_code = _env_int("STANDIN_EXIT_CODE")
        self.max_model_len = _env_int("STANDIN_MAX_MODEL_LEN")
        # Tokens a chat template wraps around each message (SmolLM2's "<|im_start|>user\n"
        # ... "<|im_end|>\n" is ~6), counted like vLLM counts the templated prompt.
        self.message_tokens = _env_int("STANDIN_MESSAGE_TOKENS") or 0
        # Seconds to keep serving after SIGTERM, like a server finishing its requests.
        self.term_delay = float(os.environ.get("STANDIN_TERM_DELAY", "0") or 0)
        # vLLM's sleep mode endpoints (VLLM_SERVER_DEV_MODE=1): /sleep, /wake_up, /is_sleeping.
        self.dev_mode = os.environ.get("STANDIN_DEV_MODE", "") == "1"
        self.wake_delay = float(os.environ.get("STANDIN_WAKE_DELAY", "0") or 0)
        # Level 2 dropped the weights: `collective_rpc reload_weights` reads them this long.
        self.reload_delay = float(os.environ.get("STANDIN_RELOAD_DELAY", "0") or 0)
        # Faults: hang (accept, never answer, health included) after N /v1 requests; exit
        # on its own S seconds after it listens; fail the first K starts (counted in a file
        # under STANDIN_STATE_DIR, which outlives the container).
        self.hang_after = _env_int("STANDIN_HANG_AFTER")
        self.exit_after = float(os.environ.get("STANDIN_EXIT_AFTER", "0") or 0)
        self.fail_starts = _env_int("STANDIN_FAIL_STARTS") or 0
        self.state_dir = os.environ.get("STANDIN_STATE_DIR", "")
        # A shared GPU played by a ledger file (gpu_ledger.py): take memory at start, exit
        # with vLLM's error when too little is free, give it back on exit. Off when unset.
        self.gpu_ledger = os.environ.get("STANDIN_GPU_LEDGER", "")
        ids = os.environ.get("STANDIN_GPU_IDS", "0")
        self.gpu_ids = [int(i) for i in ids.split(",") if i.strip()]
        self.vram_bytes = _env_int("STANDIN_VRAM_BYTES")  # per GPU; else the utilization
        util = os.environ.get("STANDIN_GPU_MEMORY_UTILIZATION", "").strip()
        self.gpu_utilization = float(util) if util else None  # vLLM's default 0.9
        self.sleep_vram = _env_int("STANDIN_SLEEP_VRAM_BYTES")  # kept while asleep
        self.ledger_stale = float(os.environ.get("STANDIN_LEDGER_STALE", "10") or 10)
        # Time to first byte that grows with its own load, like a batching server (seed 003:
        # 357 ms alone, 1.8 s at 128): base + per_request x the completions in progress.
        self.ttfb_base = float(os.environ.get("STANDIN_TTFB_BASE", "0") or 0)
        self.ttfb_per_request = float(os.environ.get("STANDIN_TTFB_PER_REQUEST", "0") or 0)


CONFIG: Config  # set in main(); handlers read it


def _words(value: Any) -> int:
    """Count whitespace-separated words in a message content (string or list of parts)."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(p.get("text") if isinstance(p, dict) else p) for p in value)
    return 0


def _prompt_tokens(path: str, req: dict[str, Any]) -> int:
    """One token per word, plus the chat template's tokens around each message."""
    if path == "/v1/chat/completions":
        msgs = req.get("messages") or []
        return sum(CONFIG.message_tokens + _words(m.get("content"))
                   for m in msgs if isinstance(m, dict))
    return _words(req.get("prompt"))


def _max_tokens(req: dict[str, Any]) -> int | None:
    value = req.get("max_tokens", req.get("max_completion_tokens"))
    return int(value) if isinstance(value, int | float) else None


def _vec(text: str) -> list[float]:
    """Deterministic 8-float embedding so tests can compare results across calls."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255.0, 6) for b in digest[:8]]


class Handler(BaseHTTPRequestHandler):
    """One request per call; HTTP/1.1 keep-alive so benchmarks are not dominated by connects."""

    protocol_version = "HTTP/1.1"
    server_version = "standin/1.0"
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging: it would dominate benchmark time and docker logs."""

    # ---- plumbing -------------------------------------------------------------------

    def _iter_body(self) -> Iterator[bytes]:
        """Yield the request body in pieces of at most READ_CHUNK (Content-Length or chunked)."""
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise BadBody("eof in chunk size")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError as exc:
                    raise BadBody(f"bad chunk size {line!r}") from exc
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # discard trailers
                    return
                while size > 0:
                    data = self.rfile.read(min(size, READ_CHUNK))
                    if not data:
                        raise BadBody("eof in chunk")
                    size -= len(data)
                    yield data
                self.rfile.readline(65537)  # CRLF after chunk data
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            data = self.rfile.read(min(remaining, READ_CHUNK))
            if not data:
                raise BadBody("eof in body")
            remaining -= len(data)
            yield data

    def _read_body(self) -> bytes:
        return b"".join(self._iter_body())

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode())

    def _error(self, status: int, message: str, code: str) -> None:
        err = {"message": message, "type": "invalid_request_error", "code": code}
        self._json(status, {"error": err})

    def _chunk(self, data: bytes) -> None:
        """Write one hand-made HTTP/1.1 chunk and flush so the client sees it immediately."""
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    # ---- dispatch -------------------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            self._route()
        except BadBody:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _route(self) -> None:
        path = urlsplit(self.path).path
        method = self.command
        if path == "/standin/stats":
            self._read_body()
            with STATS_LOCK:
                return self._json(200, {"requests": dict(STATS), "order": ORDER[-1000:]})
        if HUNG.is_set():
            HUNG_FOREVER.wait()  # a wedged server: the connection stays open, unanswered
        if path != "/health":
            with STATS_LOCK:  # tests prove what did (not) reach the server
                STATS[f"{method} {path}"] += 1
                warmup = self.headers.get("X-Supervisor-Warmup") == "true"
                ORDER.append(f"{'warmup' if warmup else 'request'} {method} {path}")
                served = sum(n for k, n in STATS.items() if " /v1/" in k)
            if CONFIG.hang_after is not None and served >= CONFIG.hang_after:
                print("standin: hanging from now on", flush=True)
                HUNG.set()
        if CONFIG.dev_mode and path in ("/sleep", "/wake_up", "/is_sleeping",
                                        "/collective_rpc"):
            return self._sleep_mode(method, path, self._read_body())
        if WEIGHTS["dropped"] and path.startswith("/v1/"):
            self._read_body()  # vLLM would answer nonsense: its weights were never reloaded
            return self._error(500, "woken from level 2 without reload_weights", "no_weights")
        if SLEEPING.is_set() and path.startswith("/v1/"):
            # vLLM would hang here; answering 503 makes a proxy that forgot to wake it fail fast.
            self._read_body()
            return self._error(503, "the stand-in is asleep", "sleeping")
        if path.startswith("/v1/") and "websocket" in self.headers.get("Upgrade", "").lower():
            return self._websocket()
        if path == "/v1/realtime":
            self._read_body()
            return self._error(426, "GET /v1/realtime needs Upgrade: websocket", "upgrade_required")
        if path == "/v1/echo" or path.startswith("/v1/echo/"):
            return self._echo()
        if method == "POST" and path == "/v1/audio/transcriptions":
            return self._transcribe()
        body = self._read_body()  # always drained so keep-alive stays in sync
        if method in ("GET", "HEAD") and path == "/health":
            return self._send(200, b"", "text/plain")
        if method in ("GET", "HEAD") and path == "/v1/models":
            return self._json(200, self._models())
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            with BUSY_LOCK:
                others = BUSY[0]
                BUSY[0] += 1
            try:
                if CONFIG.ttfb_base or CONFIG.ttfb_per_request:
                    time.sleep(CONFIG.ttfb_base + CONFIG.ttfb_per_request * others)
                return self._completion(path, body)
            finally:
                with BUSY_LOCK:
                    BUSY[0] -= 1
        if method == "POST" and path == "/v1/embeddings":
            return self._embeddings(body)
        self._error(404, f"{method} {path} not found", "not_found")
        return None

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    # ---- endpoints ------------------------------------------------------------------

    def _sleep_mode(self, method: str, path: str, body: bytes) -> None:
        """As vLLM: a second /sleep is ignored; level 2 drops the weights, which a wake
        (all tags, or `weights` then `kv_cache`) does not bring back: reload_weights does."""
        query = parse_qs(urlsplit(self.path).query)
        if method == "GET" and path == "/is_sleeping":
            return self._json(200, {"is_sleeping": SLEEPING.is_set()})
        if method == "POST" and path == "/collective_rpc":
            if json.loads(body or b"{}").get("method") == "reload_weights":
                time.sleep(CONFIG.reload_delay)
                WEIGHTS["dropped"] = False
                print("standin: weights reloaded", flush=True)
            return self._json(200, {"results": [None]})
        if method == "POST" and path == "/sleep" and SLEEPING.is_set():
            return self._send(200, b"", "text/plain")  # "Executor is already sleeping."
        if method == "POST" and path == "/sleep":
            level = int(query.get("level", ["1"])[0])
            WEIGHTS["dropped"] = level >= 2
            if LEDGER.token and CONFIG.sleep_vram is not None:
                _ledger().resize(CONFIG.gpu_ledger, LEDGER.token,
                                 dict.fromkeys(LEDGER.full, CONFIG.sleep_vram))
            SLEEPING.set()
            print(f"standin: asleep (level {level})", flush=True)
            return self._send(200, b"", "text/plain")
        if method == "POST" and path == "/wake_up" and query.get("tags") == ["weights"]:
            return self._send(200, b"", "text/plain")  # the weights' memory, still empty
        if method == "POST" and path == "/wake_up":
            time.sleep(CONFIG.wake_delay)  # copying weights back takes a while
            if LEDGER.token and CONFIG.sleep_vram is not None:
                oom = _ledger().resize(CONFIG.gpu_ledger, LEDGER.token, LEDGER.full)
                if oom:
                    print(f"standin: {oom}", flush=True)
                    return self._json(500, {"error": oom})
            SLEEPING.clear()
            print("standin: awake", flush=True)
            return self._send(200, b"", "text/plain")
        return self._error(405, f"{method} {path} not allowed", "method_not_allowed")

    def _models(self) -> dict[str, Any]:
        model = {
            "id": CONFIG.model,
            "object": "model",
            "created": int(START_TIME),
            "owned_by": "standin",
            "root": CONFIG.model,
            "max_model_len": CONFIG.max_model_len,
        }
        return {"object": "list", "data": [model]}

    def _parse_json(self, body: bytes) -> dict[str, Any] | None:
        try:
            obj = json.loads(body or b"{}")
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            self._error(400, "request body must be a JSON object", "bad_request")
            return None
        return obj

    def _completion(self, path: str, body: bytes) -> None:
        req = self._parse_json(body)
        if req is None:
            return
        chat = path == "/v1/chat/completions"
        prompt = _prompt_tokens(path, req)
        max_tokens = _max_tokens(req)
        if CONFIG.max_model_len is not None:
            want = max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS
            total = prompt + want
            if total > CONFIG.max_model_len:
                # Tests read this line to prove which server refused (vLLM answers the 400).
                print(f"standin: refused {total} tokens, more than max_model_len "
                      f"{CONFIG.max_model_len}", flush=True)
                msg = (
                    f"This model's maximum context length is {CONFIG.max_model_len} tokens. "
                    f"However, you requested {total} tokens ({prompt} in the messages, "
                    f"{want} in the completion). Please reduce the length of the messages "
                    "or completion."
                )
                err = {
                    "object": "error",
                    "message": msg,
                    "type": "BadRequestError",
                    "param": None,
                    "code": 400,
                }
                return self._json(400, err)
        delay = float(req.get("delay") or 0)
        if delay > 0:
            time.sleep(delay)
        model = str(req.get("model") or CONFIG.model)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        if req.get("stream"):
            n = max_tokens if max_tokens is not None else DEFAULT_STREAM_CHUNKS
            n = max(1, min(n, MAX_STREAM_CHUNKS))
            opts = req.get("stream_options") or {}
            usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
            return self._stream(
                chat,
                rid,
                created,
                model,
                n,
                float(req.get("stream_delay") or 0),
                usage if isinstance(opts, dict) and opts.get("include_usage") else None,
            )
        usage = {"prompt_tokens": prompt, "completion_tokens": 2, "total_tokens": prompt + 2}
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": REPLY},
                "logprobs": None,
                "finish_reason": "stop",
            }
        else:
            choice = {"index": 0, "text": REPLY, "logprobs": None, "finish_reason": "stop"}
        obj = "chat.completion" if chat else "text_completion"
        self._json(
            200,
            {
                "id": rid,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage,
            },
        )
        return None

    def _stream(
        self,
        chat: bool,
        rid: str,
        created: int,
        model: str,
        n: int,
        stream_delay: float,
        usage: dict[str, int] | None,
    ) -> None:
        """Server-sent events over a hand-written chunked response, one token per event."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        obj = "chat.completion.chunk" if chat else "text_completion"
        base = {"id": rid, "object": obj, "created": created, "model": model}
        for i in range(n):
            last = i == n - 1
            finish = "length" if last else None
            if chat:
                delta: dict[str, str] = {"content": f"tok{i} "}
                if i == 0:
                    delta["role"] = "assistant"
                choice: dict[str, Any] = {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": finish,
                }
            else:
                choice = {"index": 0, "text": f"tok{i} ", "logprobs": None, "finish_reason": finish}
            event = {**base, "choices": [choice]}
            self._chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
            if stream_delay > 0 and not last:
                time.sleep(stream_delay)
        if usage is not None:
            event = {**base, "choices": [], "usage": usage}
            self._chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _embeddings(self, body: bytes) -> None:
        req = self._parse_json(body)
        if req is None:
            return
        raw = req.get("input", "")
        inputs = [raw] if isinstance(raw, str) else [str(x) for x in raw]
        data = [
            {"object": "embedding", "index": i, "embedding": _vec(s)} for i, s in enumerate(inputs)
        ]
        words = sum(len(s.split()) for s in inputs)
        self._json(
            200,
            {
                "object": "list",
                "data": data,
                "model": str(req.get("model") or CONFIG.model),
                "usage": {"prompt_tokens": words, "total_tokens": words},
            },
        )

    def _transcribe(self) -> None:
        """Hash the raw multipart body while streaming it; only the `model` field is parsed."""
        sha = hashlib.sha256()
        total = 0
        model: str | None = None
        window = b""  # small tail kept only until the model field is found
        for data in self._iter_body():
            sha.update(data)
            total += len(data)
            if model is not None:
                continue
            window += data
            m = _MODEL_FIELD.search(window)
            if m is None:
                window = window[-64:]
                continue
            start = window.find(b"\r\n\r\n", m.start())
            end = window.find(b"\r\n--", start + 4) if start >= 0 else -1
            if end < 0:
                window = window[m.start() :][-READ_CHUNK:]
                continue
            model = window[start + 4 : end].decode("utf-8", "replace")
            window = b""
        self._json(
            200,
            {
                "text": "stand-in transcription",
                "model": model,
                "received_bytes": total,
                "sha256": sha.hexdigest(),
            },
        )

    def _echo(self) -> None:
        """Report exactly what arrived so tests can prove the proxy forwards transparently."""
        sha = hashlib.sha256()
        total = 0
        for data in self._iter_body():
            sha.update(data)
            total += len(data)
        headers: dict[str, str] = {}
        for key, value in self.headers.items():
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        parts = urlsplit(self.path)
        self._json(
            200,
            {
                "method": self.command,
                "path": parts.path,
                "query": parts.query,
                "headers": headers,
                "body_len": total,
                "body_sha256": sha.hexdigest(),
            },
        )

    # ---- WebSocket (RFC 6455): GET /v1/realtime and any /v1/... with Upgrade: websocket --

    def _websocket(self) -> None:
        """Take the connection over: echo text as JSON, binary as binary, until a close."""
        self.close_connection = True  # the request loop must never read this socket again
        key = self.headers.get("Sec-WebSocket-Key", "").strip()
        if self.command != "GET" or not key:
            return self._error(400, "a WebSocket handshake needs GET and Sec-WebSocket-Key",
                               "bad_handshake")
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()  # flushed: wfile is unbuffered
        print(f"standin: websocket open {self.path}", flush=True)
        try:
            self._ws_loop()
        except (OSError, EOFError):
            pass  # the peer went away without a close frame
        finally:
            print("standin: websocket closed", flush=True)  # the server then closes the socket

    def _ws_read(self, n: int) -> bytes:
        data = self.rfile.read(n)  # rfile may already hold bytes read after the handshake
        if len(data) < n:
            raise EOFError
        return data

    def _ws_send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode])  # FIN; a server's frames are not masked
        if n < 126:
            head += bytes([n])
        elif n < 1 << 16:
            head += bytes([126]) + struct.pack("!H", n)
        else:
            head += bytes([127]) + struct.pack("!Q", n)
        self.wfile.write(head + payload)

    def _ws_loop(self) -> None:
        message, kind = b"", 0  # a fragmented message is gathered until its FIN
        while True:
            b0, b1 = self._ws_read(2)
            fin, opcode, length = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._ws_read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._ws_read(8))[0]
            mask = self._ws_read(4) if b1 & 0x80 else b"\0\0\0\0"
            data = bytes(c ^ mask[i % 4] for i, c in enumerate(self._ws_read(length)))
            if opcode == 0x8:  # close: answer with the same code, then end
                self._ws_send(0x8, data[:2])
                return
            if opcode == 0x9:  # ping
                self._ws_send(0xA, data)
                continue
            if opcode == 0xA:  # an unsolicited pong
                continue
            if opcode in (0x1, 0x2):
                message, kind = data, opcode
            else:  # 0x0: continuation
                message += data
            if not fin:
                continue
            if kind == 0x1:
                reply = {"type": "echo", "model": CONFIG.model, "path": self.path,
                         "data": message.decode("utf-8", "replace")}
                self._ws_send(0x1, json.dumps(reply).encode())
            else:
                self._ws_send(0x2, message)


START_TIME = time.time()
STATS: collections.Counter[str] = collections.Counter()
STATS_LOCK = threading.Lock()
ORDER: list[str] = []  # what reached the server, in order (warm-ups marked)
SLEEPING = threading.Event()
WEIGHTS = {"dropped": False}  # a level-2 sleep dropped them and nothing reloaded them
HUNG = threading.Event()
HUNG_FOREVER = threading.Event()  # never set
BUSY = [0]  # completions in progress (STANDIN_TTFB_PER_REQUEST)
BUSY_LOCK = threading.Lock()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """PID 1 in a container ignores SIGTERM unless handled; exit so `compose stop` is quick."""
    if CONFIG.term_delay > 0:
        print(f"standin: SIGTERM, exiting in {CONFIG.term_delay}s", flush=True)
        threading.Timer(CONFIG.term_delay, _exit_now, (0,)).start()
        return
    raise SystemExit(0)


def _fail_loading(code: int) -> None:
    """Mimic a model server dying while loading weights, with a vLLM-ish traceback tail."""
    lines = [
        f"INFO standin: loading weights for {CONFIG.model}",
        "Traceback (most recent call last):",
        '  File "/standin/standin.py", line 1, in load_weights',
        f"RuntimeError: stand-in failed to load weights (STANDIN_EXIT_CODE={code})",
    ]
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()
    sys.exit(code)


def _die(after: float) -> None:
    print(f"standin: exiting on its own after {after}s", flush=True)
    _exit_now(1)


class _Ledger:
    token = ""  # set once memory is taken from the ledger
    full: dict[int, int] = {}  # noqa: RUF012 - what it holds awake, per GPU


LEDGER = _Ledger()


def _ledger() -> Any:
    """gpu_ledger.py beside this file (imported late: only with STANDIN_GPU_LEDGER)."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import gpu_ledger

    return gpu_ledger


def _release_gpu_memory() -> None:
    if LEDGER.token:
        _ledger().release(CONFIG.gpu_ledger, LEDGER.token)
        LEDGER.token = ""


def _exit_now(code: int) -> None:
    """os._exit skips atexit: give the memory back first, as the driver would."""
    _release_gpu_memory()
    os._exit(code)


def _take_gpu_memory() -> None:
    """vLLM checks free memory on each GPU when its workers start, before loading."""
    ledger = _ledger()
    token = ledger.new_token()
    error = ledger.take(CONFIG.gpu_ledger, token, CONFIG.gpu_ids, model=CONFIG.model,
                        utilization=CONFIG.gpu_utilization, vram=CONFIG.vram_bytes,
                        stale=CONFIG.ledger_stale)
    if error:
        lines = [
            "ERROR [core.py] EngineCore failed to start.",
            "Traceback (most recent call last):",
            '  File "/standin/gpu_ledger.py", line 1, in request_memory',
            error,
            "RuntimeError: Engine core initialization failed. See root cause above.",
        ]
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()
        sys.exit(1)
    LEDGER.token, LEDGER.full = token, ledger.holding(CONFIG.gpu_ledger, token)
    atexit.register(_release_gpu_memory)
    print(f"standin: holds {LEDGER.full} bytes per GPU of {CONFIG.gpu_ledger}", flush=True)

    def beat() -> None:
        while LEDGER.token:
            time.sleep(min(ledger.HEARTBEAT, CONFIG.ledger_stale / 3))
            if LEDGER.token and not ledger.heartbeat(CONFIG.gpu_ledger, LEDGER.token):
                print("standin: my ledger entries are gone (reset, or reaped)", flush=True)

    threading.Thread(target=beat, name="ledger-heartbeat", daemon=True).start()


def _play_log_script(path: str) -> None:
    with open(path) as script:
        for entry in script:
            if entry.strip() and not entry.startswith("#"):
                delay, _, line = entry.rstrip("\n").partition(" ")
                time.sleep(float(delay))
                print(line, flush=True)


def main() -> None:
    global CONFIG
    signal.signal(signal.SIGTERM, _on_sigterm)
    CONFIG = Config()
    print(f"standin: starting model={CONFIG.model} pid={os.getpid()}", flush=True)
    if CONFIG.gpu_ledger:
        _take_gpu_memory()
    if CONFIG.log_script:
        _play_log_script(CONFIG.log_script)
    if CONFIG.startup_delay > 0:
        time.sleep(CONFIG.startup_delay)  # vLLM only opens its port once the model is loaded
    if CONFIG.exit_code is not None:
        _fail_loading(CONFIG.exit_code)
    if CONFIG.fail_starts and CONFIG.state_dir:
        counter = os.path.join(CONFIG.state_dir, f"{CONFIG.model}.failed-starts")
        failed = int(open(counter).read()) if os.path.exists(counter) else 0  # noqa: SIM115
        if failed < CONFIG.fail_starts:
            with open(counter, "w") as out:
                out.write(str(failed + 1))
            _fail_loading(70)
    if CONFIG.exit_after > 0:
        threading.Timer(CONFIG.exit_after, _die, (CONFIG.exit_after,)).start()
    ThreadingHTTPServer.request_queue_size = 1024  # the default backlog of 5 drops connections
    server = ThreadingHTTPServer((CONFIG.host, CONFIG.port), Handler)
    server.daemon_threads = True  # in-flight requests must not delay exit
    print(f"standin: listening on {CONFIG.host}:{CONFIG.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
