"""The one HTTP seam to Meta's Graph API (WhatsApp Cloud API and Messenger Send API).

Base URL and version come from ``GRAPH_API_BASE_URL`` / ``GRAPH_API_VERSION`` so tests and a proxy
can point elsewhere. Every call classifies Meta's error answer into a ``SendError``:

- throttling (130429, 131056, 613, 4, 80007, HTTP 429) and 5xx / connection errors are retried here
  with exponential backoff and full jitter, a bounded number of times; when they persist the error
  is transient (``permanent=False``) so the caller's task can retry later;
- outside the customer-service window (WhatsApp 131047, Messenger 10 / 2018278) is permanent;
- an invalid or expired token (190) is permanent and disables sending for the channel.

Tokens travel in the ``Authorization`` header only (Graph accepts it for page tokens too), never in
a URL, so no exception message or log line can carry one.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings

from channels_app.adapters.base import SendError
from config import egress
from config.logs import HTTP_HEADER, get_correlation_id

logger = logging.getLogger(__name__)

THROTTLING_CODES = frozenset({130429, 131056, 613, 4, 80007, 17, 32})
OUTSIDE_WINDOW_CODES = frozenset({131047})
MESSENGER_OUTSIDE_WINDOW_SUBCODES = frozenset({2018278, 2534022})
TOKEN_CODES = frozenset({190})

_local = threading.local()

# The code of a SendError raised when a POST may have been taken by Meta although no answer says so.
OUTCOME_UNKNOWN = "outcome_unknown"
_at_most_once: contextvars.ContextVar[bool] = contextvars.ContextVar("graph_post_at_most_once", default=False)


@contextlib.contextmanager
def posts_at_most_once() -> Iterator[None]:
    """Within this block a POST is made once and never repeated when Meta may have taken it: a read
    timeout, a dropped connection, a 5xx or an answer that is not JSON raise SendError with code
    OUTCOME_UNKNOWN instead of posting again (a campaign message: the status webhook tells what
    happened). A POST Meta certainly did not take (no connection made, 429 / throttled) raises its
    usual transient SendError, to be sent later."""
    token = _at_most_once.set(True)
    try:
        yield
    finally:
        _at_most_once.reset(token)


def _never_connected(exc: requests.RequestException) -> bool:
    """The request certainly never reached the server: the connection itself failed."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if isinstance(exc, requests.ConnectionError) and exc.args else None
    return type(reason).__name__ in {"NewConnectionError", "ConnectTimeoutError", "NameResolutionError"}


def _session() -> requests.Session:
    """One keep-alive session per thread (requests.Session is not thread-safe)."""
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        # The environment (HTTPS_PROXY / NO_PROXY for the Graph host, REQUESTS_CA_BUNDLE) is read once
        # here: with trust_env on, requests rescans all of os.environ twice on every call, measured
        # at ~2 ms of CPU per turn (two Graph calls) in bench.turn.
        session.proxies.update(requests.utils.get_environ_proxies(settings.GRAPH_API_BASE_URL))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            session.verify = bundle
        session.trust_env = False
        _local.session = session
    return session


@dataclass(frozen=True)
class GraphConfig:
    base_url: str
    version: str
    timeout: float
    max_attempts: int
    backoff_base: float
    backoff_max: float

    @classmethod
    def from_settings(cls) -> GraphConfig:
        return cls(
            base_url=settings.GRAPH_API_BASE_URL.rstrip("/"),
            version=settings.GRAPH_API_VERSION.strip("/"),
            timeout=settings.GRAPH_API_TIMEOUT,
            max_attempts=max(1, settings.GRAPH_API_MAX_ATTEMPTS),
            backoff_base=settings.GRAPH_API_BACKOFF_BASE,
            backoff_max=settings.GRAPH_API_BACKOFF_MAX,
        )


def backoff_delay(attempt: int, *, base: float, cap: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (attempt counts from 0)."""
    return random.uniform(0, min(cap, base * (2**attempt)))


def classify_error(status_code: int, body: Any) -> SendError:
    """Turn a Graph error answer into a SendError that says whether to retry or disable."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        transient = status_code >= 500 or status_code == 429
        return SendError(
            f"Graph API answered HTTP {status_code}",
            code=status_code,
            permanent=not transient,
            details={"http_status": status_code},
        )
    code = error.get("code")
    subcode = error.get("error_subcode")
    raw_error_data = error.get("error_data")
    error_data: dict[str, Any] = raw_error_data if isinstance(raw_error_data, dict) else {}
    details = {
        "http_status": status_code,
        "code": code,
        "subcode": subcode,
        "type": error.get("type", ""),
        "message": str(error.get("message", ""))[:500],
        "details": str(error_data.get("details", ""))[:500],
        "fbtrace_id": error.get("fbtrace_id", ""),
    }
    message = details["message"] or f"Graph API error {code}"
    if code in TOKEN_CODES:
        return SendError(
            f"access token invalid or expired (190): {message}",
            code=code,
            permanent=True,
            disable_channel=True,
            details=details,
        )
    if code in OUTSIDE_WINDOW_CODES or (
        code == 10 and (subcode in MESSENGER_OUTSIDE_WINDOW_SUBCODES or "outside of allowed window" in message)
    ):
        details["reason"] = "outside_window"
        return SendError(
            f"outside the customer service window ({code}): {message}",
            code=code,
            permanent=True,
            details=details,
        )
    if code in THROTTLING_CODES or status_code == 429 or status_code >= 500:
        details["reason"] = "throttled" if code in THROTTLING_CODES or status_code == 429 else "server_error"
        return SendError(f"Graph API busy ({code}): {message}", code=code, permanent=False, details=details)
    return SendError(f"Graph API error {code}: {message}", code=code, permanent=True, details=details)


class GraphClient:
    """Calls ``{base}/{version}/{path}`` with a bearer token; returns the decoded JSON answer."""

    def __init__(self, *, access_token: str, config: GraphConfig | None = None):
        self._token = access_token
        self.config = config or GraphConfig.from_settings()

    def __repr__(self) -> str:  # never show the token
        return f"<GraphClient {self.config.base_url}/{self.config.version}>"

    def url(self, path: str) -> str:
        return f"{self.config.base_url}/{self.config.version}/{path.lstrip('/')}"

    def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", self.url(path), json=payload)

    def post_form(self, path: str, data: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> dict[str, Any]:
        """A multipart/form-data POST (media uploads: ``files`` maps a field to (filename, bytes, mime))."""
        return self._request("POST", self.url(path), data=data, files=files)

    def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._request("GET", self.url(path), params=params)

    def download(self, url: str, *, with_token: bool = True) -> tuple[bytes, str]:
        """GET a media URL (WhatsApp needs the bearer token; Messenger CDN URLs do not), streamed and cut
        at CHANNEL_MEDIA_MAX_BYTES.

        A webhook's media URL is whatever the (possibly hostile) sender signed: it is fetched only from
        the Graph API's own origin or a host in CHANNEL_MEDIA_HOSTS (Meta's CDNs), the latter through
        the egress guard (checked address, no proxies, no redirects). The token goes to no other host.
        """
        limit = settings.CHANNEL_MEDIA_MAX_BYTES
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) == urlsplit(self.config.base_url)[:2]:
            response = self._send("GET", url, with_token=with_token, stream=True)
            try:
                content = response.raw.read(limit + 1, decode_content=True) or b""
            finally:
                response.close()
            if len(content) > limit:
                raise SendError(f"media over the limit of {limit} bytes", code="too_large", permanent=True)
            return content, response.headers.get("Content-Type", "application/octet-stream")
        if parts.scheme != "https" or not egress.host_allowed(parts.hostname or "", settings.CHANNEL_MEDIA_HOSTS):
            raise SendError(
                f"media host refused: {parts.hostname or '(none)'} is not one of CHANNEL_MEDIA_HOSTS",
                code="media_host_refused",
                permanent=True,
            )
        headers = {"Authorization": f"Bearer {self._token}"} if with_token else {}
        try:
            answer = egress.fetch(url, headers=headers, timeout=self.config.timeout, max_bytes=limit)
        except egress.EgressRefused as exc:
            raise SendError(f"media host refused: {exc}", code="media_host_refused", permanent=True) from None
        except egress.ResponseTooLarge:
            raise SendError(f"media over the limit of {limit} bytes", code="too_large", permanent=True) from None
        except requests.RequestException as exc:
            raise SendError(f"media download failed: {type(exc).__name__}", permanent=False) from None
        if answer.status_code >= 300:
            raise SendError(
                f"media download answered HTTP {answer.status_code}",
                code=answer.status_code,
                permanent=answer.status_code < 500,
            )
        return answer.content, answer.headers.get("Content-Type", "application/octet-stream")

    def _request(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        response = self._send(method, url, **kwargs)
        try:
            body = response.json()
        except ValueError:
            once = method == "POST" and _at_most_once.get()
            raise SendError(
                f"Graph API answered HTTP {response.status_code} with a body that is not JSON",
                code=OUTCOME_UNKNOWN if once else response.status_code,
                permanent=False,
            ) from None
        return body if isinstance(body, dict) else {"data": body}

    def _send(self, method: str, url: str, *, with_token: bool = True, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self._token}"} if with_token else {}
        if cid := get_correlation_id():  # the inbound message's id, for Meta's side and any proxy's log
            headers[HTTP_HEADER] = cid
        cfg = self.config
        once = method == "POST" and _at_most_once.get()
        last_error: SendError | None = None
        for attempt in range(1 if once else cfg.max_attempts):
            if attempt:
                delay = backoff_delay(attempt - 1, base=cfg.backoff_base, cap=cfg.backoff_max)
                time.sleep(delay)
            try:
                response = _session().request(method, url, headers=headers, timeout=cfg.timeout, **kwargs)
            except requests.RequestException as exc:
                if once and not _never_connected(exc):
                    raise SendError(
                        f"Graph API gave no answer ({type(exc).__name__}): the message may have been sent",
                        code=OUTCOME_UNKNOWN,
                        permanent=False,
                    ) from None
                # The URL never holds a token, so the exception text is safe to keep.
                last_error = SendError(
                    f"Graph API unreachable: {type(exc).__name__}", permanent=False, details={"error": str(exc)[:300]}
                )
                logger.warning("graph api unreachable", extra={"attempt": attempt + 1, "error": type(exc).__name__})
                continue
            if response.status_code < 400:
                return response
            try:
                body: Any = response.json()
            except ValueError:
                body = None
            last_error = classify_error(response.status_code, body)
            if once and response.status_code >= 500 and not last_error.permanent:
                last_error.code = OUTCOME_UNKNOWN  # Meta may have taken it before failing
            logger.warning(
                "graph api error",
                extra={
                    "attempt": attempt + 1,
                    "http_status": response.status_code,
                    "code": last_error.code,
                    "permanent": last_error.permanent,
                },
            )
            if last_error.permanent:
                raise last_error
        assert last_error is not None
        last_error.retry_after = backoff_delay(cfg.max_attempts, base=cfg.backoff_base, cap=cfg.backoff_max) + 1
        raise last_error

    def read_object_id(self, path: str, *, fields: str) -> str | None:
        """``GET /{path}?fields=...`` with this token: the ``id`` Meta answers, or None when Meta refuses
        (the token cannot see that object, or the token is invalid). Throttling, 5xx and connection
        errors raise SendError (transient): whether the token can see it is then unknown."""
        try:
            body = self.get(path, {"fields": fields})
        except SendError as exc:
            if exc.permanent:
                return None
            raise
        found = body.get("id")
        return str(found) if isinstance(found, str | int) else None
