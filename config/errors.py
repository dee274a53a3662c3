"""One error shape for every API answer: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.core.exceptions import (
    PermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

logger = logging.getLogger(__name__)

JSON_PATH_PREFIXES = ("/api/", "/webhooks/")


class ApiError(exceptions.APIException):
    """A business error with an explicit code, e.g. ``ApiError(409, "duplicate", "...")``."""

    def __init__(self, status_code: int, code: str, message: str, details: Any = None):
        self.status_code = status_code
        self.error_code = code
        self.details = details
        super().__init__(detail=message, code=code)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details if details is not None else {}}}


def json_error(status_code: int, code: str, message: str, details: Any = None) -> JsonResponse:
    return JsonResponse(error_body(code, message, details), status=status_code)


_DEFAULT_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _suspicious_request(exc: SuspiciousOperation) -> ApiError:
    """What Django refuses while reading a request (raised from ``request.data`` inside a view)."""
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return ApiError(413, "payload_too_large", f"The request body is over {limit} bytes.", {"limit": limit})
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        return ApiError(400, "validation_error", str(exc))
    return ApiError(400, "invalid_request", "The request is malformed.")


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    # Imported here: rest_framework.views loads the parser classes, and config.ingress (one of them)
    # imports this module.
    from rest_framework.views import exception_handler

    if isinstance(exc, SuspiciousOperation):
        exc = _suspicious_request(exc)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "message_dict") else exc.messages)

    response = exception_handler(exc, context)
    if response is None:
        return None
    assert isinstance(exc, exceptions.APIException)
    status_code = response.status_code
    if isinstance(exc, ApiError):
        body = error_body(exc.error_code, str(exc.detail), exc.details)
    elif isinstance(exc, exceptions.ValidationError):
        body = error_body("validation_error", "The request is invalid; see details for each field.", exc.detail)
    elif isinstance(exc, exceptions.Throttled):
        wait = int(getattr(exc, "wait", None) or 1)
        body = error_body("rate_limited", f"Too many requests; retry in {wait} s.", {"retry_after": wait})
    else:
        detail = exc.detail
        code = getattr(detail, "code", None) or exc.default_code or _DEFAULT_CODES.get(status_code, "error")
        if code in ("error", "invalid"):
            code = _DEFAULT_CODES.get(status_code, "error")
        message = str(detail) if not isinstance(detail, dict | list) else code.replace("_", " ")
        body = error_body(code, message, detail if isinstance(detail, dict | list) else None)
    response.data = body
    return response


class JsonErrorMiddleware:
    """Django-level errors on API and webhook paths answer JSON too, not its HTML pages: 404, 405, a
    CSRF 403, a 400 for a request Django found suspicious, a 500 (a deliberate plain-text answer stays)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        content_type = response.get("Content-Type", "")
        if (
            request.path.startswith(JSON_PATH_PREFIXES)
            and response.status_code >= 400
            and (content_type.startswith("text/html") or response.status_code in (404, 405, 500))
            and not content_type.startswith("application/json")
            and not getattr(response, "streaming", False)
        ):
            return _as_json(request, response)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not request.path.startswith(JSON_PATH_PREFIXES) or isinstance(exception, Http404):
            return None
        if isinstance(exception, SuspiciousOperation):
            error = _suspicious_request(exception)
            logger.warning("suspicious request refused: %s", type(exception).__name__, extra={"path": request.path})
            return json_error(error.status_code, error.error_code, str(error.detail), error.details)
        logger.exception("unhandled error", extra={"path": request.path})
        return json_error(
            status.HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "Internal error; it has been logged."
        )


_MESSAGES = {
    400: "The request is malformed.",
    403: "Forbidden.",
    404: "No such resource.",
    500: "Internal error; it has been logged.",
}


def _as_json(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    status_code = response.status_code
    if status_code == 405:
        message = f"Method {request.method} is not allowed here."
    else:
        message = _MESSAGES.get(status_code) or HTTPStatus(status_code).phrase + "."
    code = _DEFAULT_CODES.get(status_code) or ("internal_error" if status_code >= 500 else "error")
    answer = json_error(status_code, code, message)
    if response.has_header("Allow"):
        answer["Allow"] = response["Allow"]
    return answer
