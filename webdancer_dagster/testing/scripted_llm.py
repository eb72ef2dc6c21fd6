"""A real OpenAI-compatible HTTP server on 127.0.0.1 that replays scripted assistant turns (tests and benchmarks only).

Tests of the agent loop, trajectory sampling, the judge and RL rollouts need exact model output (to test format
handling byte for byte) and failures on demand (HTTP 500, garbage bodies, slow replies, dropped connections,
a server dying mid-run), over the same protocol a real server speaks: POST /v1/chat/completions and
GET /v1/models. Token counts are whitespace-separated words, a stand-in that keeps usage numbers meaningful.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ScriptedReply:
    """One scripted answer to one chat request; the flags make it fail instead of answering.

    `garbage` sends an HTML page with status 200; `raw_json` sends that text as an `application/json` 200 body
    (a body that parses but is no completion); `drop` closes the connection without an answer; `die` does so and
    stops the whole server.
    """

    content: str = ""
    reasoning_content: str | None = None
    status: int = 200
    delay_s: float = 0.0
    garbage: bool = False
    raw_json: str | None = None
    drop: bool = False
    die: bool = False


Responder = Callable[[dict[str, Any]], "ScriptedReply | str"]


def _apply_stop(content: str, stop: Iterable[str]) -> tuple[str, bool]:
    """Cut at the earliest stop sequence, excluding it, as OpenAI-compatible servers do."""
    cut = min((content.find(s) for s in stop if s and s in content), default=-1)
    return (content[:cut], True) if cut >= 0 else (content, False)


def _count_words(text: str) -> int:
    return len(text.split())


class _QuietHTTPServer(ThreadingHTTPServer):
    """A client that gave up (a timeout test) leaves a broken pipe behind: expected here, not worth a traceback."""

    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            logger.debug("scripted llm: client %s went away", client_address)
            return
        super().handle_error(request, client_address)


class ScriptedLLMServer:
    """Serve scripted replies in order (or from a responder function) until stopped.

    Use as a context manager; `base_url` ends in /v1 and `requests` holds every chat request body received;
    `max_in_flight` is the most chat requests it was ever handling at once.
    A request after the script runs out gets HTTP 400, so a test that makes more calls than it scripted fails
    loudly instead of hanging.
    """

    def __init__(
        self,
        script: Iterable[ScriptedReply | str] | Responder,
        *,
        model: str = "scripted-model",
        host: str = "127.0.0.1",
    ) -> None:
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        if callable(script):
            self._responder: Responder = script
        else:
            replies = iter(list(script))
            self._responder = lambda _request: next(replies)
        self._server = _QuietHTTPServer((host, 0), self._handler_class())
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ScriptedLLMServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="scripted-llm", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket; later connections are refused."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ScriptedLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _next_reply(self, request: dict[str, Any]) -> ScriptedReply | None:
        with self._lock:
            self.requests.append(request)
            try:
                reply = self._responder(request)
            except StopIteration:
                return None
        return ScriptedReply(content=reply) if isinstance(reply, str) else reply

    def _completion_body(self, request: Mapping[str, Any], reply: ScriptedReply) -> dict[str, Any]:
        content, stopped = _apply_stop(reply.content, request.get("stop") or [])
        finish_reason = "stop"
        max_tokens = request.get("max_tokens")
        if max_tokens is not None and not stopped:
            words = list(re.finditer(r"\S+", content))
            if len(words) > max_tokens:
                content = content[: words[max_tokens - 1].end()]
                finish_reason = "length"
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reply.reasoning_content is not None:
            message["reasoning_content"] = reply.reasoning_content
        prompt_tokens = sum(_count_words(m.get("content") or "") for m in request.get("messages", []))
        completion_tokens = _count_words(content) + _count_words(reply.reasoning_content or "")
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model") or self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("scripted llm: " + format, *args)

            def _send_json(self, status: int, body: Mapping[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send_json(200, {"object": "list", "data": [{"id": scripted.model, "object": "model"}]})
                else:
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                with scripted._lock:
                    scripted._in_flight += 1
                    scripted.max_in_flight = max(scripted.max_in_flight, scripted._in_flight)
                try:
                    self._answer(request)
                finally:
                    with scripted._lock:
                        scripted._in_flight -= 1

            def _answer(self, request: dict[str, Any]) -> None:
                reply = scripted._next_reply(request)
                if reply is None:
                    message = f"scripted server: script exhausted after {len(scripted.requests) - 1} replies"
                    self._send_json(400, {"error": {"message": message, "type": "invalid_request_error"}})
                    return
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.drop or reply.die:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    if reply.die:
                        threading.Thread(target=scripted.stop, daemon=True).start()
                    return
                if reply.garbage or reply.raw_json is not None:
                    garbage = reply.raw_json is None
                    data = b"<html><body>502 Bad Gateway</body></html>" if garbage else reply.raw_json.encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html" if garbage else "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if reply.status != 200:
                    error = {"message": f"scripted failure {reply.status}", "type": "server_error"}
                    self._send_json(reply.status, {"error": error})
                    return
                self._send_json(200, scripted._completion_body(request, reply))

        return Handler
