"""What the benchmarks' local stand-ins for Meta's and OpenAI's servers share."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


def send_json(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    """Answer 200 with ``body`` as JSON (with its length: the connection stays open for the next request)."""
    data = json.dumps(body).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
