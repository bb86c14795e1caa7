"""What the REST API promises in its OpenAPI schema beyond the routes' own models.

The error body every route may answer with (`ApiError`), the status codes each route
documents (`errors(404, 409)`), the timestamp type of `since`/`until` parameters, and the
`Allow` header of a 405. `tests/e2e/test_contract.py` holds the running server to it with
schemathesis, so a route that answers a code or a body its schema does not name fails there.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

_DESCRIPTIONS = {
    400: "The body is not valid JSON.",
    401: "No API key, or one that is invalid or revoked (`WWW-Authenticate: Bearer`).",
    403: "The key's role may not do this.",
    404: "No such resource.",
    409: "It conflicts with the resource's current state (`detail.code` says how).",
    413: "The upload is larger than the server accepts.",
    415: "The upload's type is not one the server reads.",
    422: "An argument is invalid: `detail` is a list naming each field (`loc`), or `{code, message}`.",
    429: "Rate limited; `Retry-After` says when to try again.",
    503: "Starting up, or Redis is unreachable; retry after `Retry-After` seconds.",
}


class ErrorDetail(BaseModel):
    """An error a client can act on: a stable `code` and a sentence for people."""

    model_config = ConfigDict(extra="allow")
    code: str
    message: str


class FieldError(BaseModel):
    """One invalid argument, as FastAPI reports it: where (`["query", "until"]`), what, which rule."""

    model_config = ConfigDict(extra="allow")
    loc: list[str | int]
    msg: str
    type: str


class ApiError(BaseModel):
    detail: ErrorDetail | list[FieldError] | str


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that may answer these error codes (with an `ApiError` body)."""
    return {code: {"model": ApiError, "description": _DESCRIPTIONS[code]} for code in codes}


AUTH = (401, 403)  # every agent and admin route
ALWAYS = (422, 503)  # every route under /v1

_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def _not_a_number(value: object) -> object:
    # pydantic would read 0 or "1700000000" as seconds since 1970; the schema says ISO 8601,
    # and a number here is more likely a client's mistake than a date.
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.match(value)):
        raise ValueError("must be an ISO 8601 date-time such as 2026-01-31T09:00:00Z, not a number")
    return value


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# A `since`/`until` argument: ISO 8601; one without a zone is taken as UTC.
Timestamp = Annotated[datetime, BeforeValidator(_not_a_number), AfterValidator(_as_utc)]
# A day, YYYY-MM-DD (the insights' ranges); a number is refused as for Timestamp.
Day = Annotated[date, BeforeValidator(_not_a_number)]


def install_allow_header(app: FastAPI) -> None:
    """A 405 lists in `Allow` every method the schema documents for the path (Starlette names
    only the first route it tried: `Allow: GET` on a path that also takes POST)."""
    by_path: list[tuple[re.Pattern[str], str]] = []

    def allowed(path: str) -> str | None:
        if not by_path:
            for template, operations in app.openapi()["paths"].items():
                regex = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
                by_path.append((re.compile(f"^{regex}$"), ", ".join(sorted(m.upper() for m in operations))))
        return next((methods for regex, methods in by_path if regex.match(path)), None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response | JSONResponse:
        if exc.status_code == 405 and (methods := allowed(request.url.path)):
            exc.headers = {**(exc.headers or {}), "Allow": methods}
        return await http_exception_handler(request, exc)
