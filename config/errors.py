"""One error shape for every API answer: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

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
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, Http404):
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
    """Django-level 404/405/500 on API and webhook paths answer JSON too (not the HTML error pages)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            request.path.startswith(JSON_PATH_PREFIXES)
            and response.status_code in (404, 405, 500)
            and not response.get("Content-Type", "").startswith("application/json")
            and not getattr(response, "streaming", False)
        ):
            code = {404: "not_found", 405: "method_not_allowed", 500: "internal_error"}[response.status_code]
            message = {
                404: "No such resource.",
                405: f"Method {request.method} is not allowed here.",
                500: "Internal error; it has been logged.",
            }[response.status_code]
            return json_error(response.status_code, code, message)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if request.path.startswith(JSON_PATH_PREFIXES) and not isinstance(exception, Http404):
            logger.exception("unhandled error", extra={"path": request.path})
            return json_error(
                status.HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "Internal error; it has been logged."
            )
        return None
