"""Real local HTTP servers speaking the wire formats the platform talks to in production:
OpenAI chat completions (JSON and server-sent-event streaming, tool calls included) and the Meta
Graph API's WhatsApp messages endpoint. The real ``openai`` and ``requests`` clients talk to them."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

_ids = itertools.count(1)


class OpenAIScript:
    """What the fake model answers. ``replies`` are consumed in order; when empty, ``default`` answers.

    A reply is a dict: {"content": str} | {"tool_calls": [(name, arguments_json), ...]} |
    {"status": 500} (an error answer) | {"body": bytes} (a 200 with those bytes) | plus optional "delay"
    seconds before answering."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        self.default: Callable[[dict[str, Any]], dict[str, Any]] = lambda body: {
            "content": "LLM answer to: " + last_user(body)
        }
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def exit(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def next(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.requests.append(body)
            return self.replies.pop(0) if self.replies else self.default(body)


def last_user(body: dict[str, Any]) -> str:
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    return users[-1]["content"] if users else ""


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet handler of a local fake service that answers JSON."""

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._bytes(status, json.dumps(body).encode())

    def _bytes(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def openai_handler(script: OpenAIScript) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            body["_headers"] = {k.lower(): v for k, v in self.headers.items()}
            if not self.path.endswith("/chat/completions"):
                return self._json(404, {"error": {"message": "not found"}})
            script.enter()
            try:
                self._answer(body)
            finally:
                script.exit()

        def _answer(self, body: dict[str, Any]) -> None:
            reply = script.next(body)
            if reply.get("delay"):
                time.sleep(reply["delay"])
            if reply.get("status"):
                return self._json(
                    reply["status"], {"error": {"message": "the model is overloaded", "type": "server_error"}}
                )
            if "body" in reply:  # a 200 with whatever a broken endpoint or proxy sends instead
                return self._bytes(200, reply["body"])
            model = body.get("model", "gpt-4o-mini")
            calls = [
                {"id": f"call_{next(_ids)}", "type": "function", "function": {"name": n, "arguments": a}}
                for n, a in reply.get("tool_calls", [])
            ]
            content = reply.get("content")
            usage = reply.get("usage", {"prompt_tokens": 100, "completion_tokens": 20})
            usage = {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
            finish = "tool_calls" if calls else "stop"
            if not body.get("stream"):
                message: dict[str, Any] = {"role": "assistant", "content": content if not calls else None}
                if calls:
                    message["tool_calls"] = calls
                return self._json(
                    200,
                    {
                        "id": f"chatcmpl-{next(_ids)}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                        "usage": usage,
                    },
                )
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            cid = f"chatcmpl-{next(_ids)}"

            def frame(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
                chunk = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": model,
                    "choices": choices,
                    **(extra or {}),
                }
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

            frame([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            if calls:
                for index, call in enumerate(calls):
                    head = {"index": index, "id": call["id"], "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
                    frame([{"index": 0, "delta": {"tool_calls": [head]}, "finish_reason": None}])
                    arguments = call["function"]["arguments"]
                    for start in range(0, len(arguments), 7):
                        piece = {"index": index, "function": {"arguments": arguments[start : start + 7]}}
                        frame([{"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}])
            else:
                words = (content or "").split(" ")
                for i, word in enumerate(words):
                    frame([{"index": 0, "delta": {"content": word if i == 0 else " " + word}, "finish_reason": None}])
            frame([{"index": 0, "delta": {}, "finish_reason": finish}])
            if (body.get("stream_options") or {}).get("include_usage"):
                frame([], {"usage": usage})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    return Handler


class GraphRecorder:
    """Everything POSTed to the fake Graph API, and what it answers."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.fail_with: dict[str, Any] | None = None  # {"status": 400, "error": {...}}
        self.delay = 0.0  # seconds before each answer (Meta being slow)
        # Set: read marks and typing indicators are answered only once it is set (at most 30 s).
        self.hold_typing: threading.Event | None = None

    @property
    def texts(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["body"].get("type") == "text"]

    def text_bodies(self) -> list[str]:
        return [r["body"]["text"]["body"] for r in self.texts]


def graph_handler(recorder: GraphRecorder) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {"_raw": raw.decode(errors="replace")}
            entry = {
                "path": self.path,
                "body": body,
                "authorization": self.headers.get("Authorization", ""),
                "arrived": time.monotonic(),
            }
            with recorder.lock:
                recorder.requests.append(entry)
            if recorder.delay:
                time.sleep(recorder.delay)
            typing = body.get("status") == "read" or "sender_action" in body
            if typing and recorder.hold_typing is not None:
                recorder.hold_typing.wait(30)
            entry["answered"] = time.monotonic()
            if recorder.fail_with and body.get("type") == "text":
                status, answer = recorder.fail_with["status"], {"error": recorder.fail_with["error"]}
            elif typing:
                status, answer = 200, {"success": True}
            else:
                wamid = f"wamid.out{next(_ids)}"
                status, answer = (
                    200,
                    {
                        "messaging_product": "whatsapp",
                        "contacts": [{"input": body.get("to", ""), "wa_id": body.get("to", "")}],
                        "messages": [{"id": wamid}],
                    },
                )
            self._json(status, answer)

    return Handler


class FunctionEndpoint:
    """A tenant's function endpoint: records signed calls, answers ``answer`` after ``delay``."""

    def __init__(self, answer: dict[str, Any] | None = None, delay: float = 0.0, status: int = 200) -> None:
        self.calls: list[dict[str, Any]] = []
        self.answer = answer or {"ok": True}
        self.delay = delay
        self.status = status


def function_handler(endpoint: FunctionEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            endpoint.calls.append({"raw": raw, "headers": {k.lower(): v for k, v in self.headers.items()}})
            if endpoint.delay:
                time.sleep(endpoint.delay)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._json(endpoint.status, endpoint.answer)

    return Handler
