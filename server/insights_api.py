"""REST for the support lead: per-day and per-week figures, and the content gaps.

The figures come from bot/insights/daily.py (counted as events are recorded), the gaps from
bot/insights/gaps.py; both are on `app.state` (server/app.py). Agent or admin key.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError

from bot.insights.daily import InsightsReport
from bot.insights.gaps import ContentGaps
from bot.privacy.audit import AuditLog
from server.api_contract import Day
from server.auth import AgentDep, Principal

router = APIRouter(prefix="/v1/agent/insights", tags=["insights"])
MAX_DAYS = 92  # period=day: about a quarter
MAX_WEEKS = 53  # period=week: about a year
DEFAULT_DAYS = 14
DEFAULT_WEEKS = 8
EARLIEST, LATEST = date(2000, 1, 1), date(2999, 12, 31)

Period = Literal["day", "week"]
SinceQuery = Annotated[Day | None, Query(description="First day, YYYY-MM-DD (UTC).")]
UntilQuery = Annotated[
    Day | None, Query(description="Last day, inclusive, YYYY-MM-DD (UTC); default today (or `since`, if later).")
]


def _invalid(field: str, message: str, value: object) -> RequestValidationError:
    """A 422 shaped like FastAPI's own, naming the query field."""
    return RequestValidationError([{"type": "value_error", "loc": ("query", field), "msg": message, "input": str(value)}])


def _range(period: Period, since: date | None, until: date | None) -> tuple[date, date]:
    """The days asked for, with defaults, checked: until not before since, not too many."""
    # Dates are clamped to the years that can hold data (date arithmetic near year 1 or 9999
    # would overflow); the reply's `since` and `until` say what was counted.
    since = min(max(since, EARLIEST), LATEST) if since is not None else None
    if until is None:
        until = max(datetime.now(UTC).date(), since or EARLIEST)
    until = min(max(until, EARLIEST), LATEST)
    if since is None and period == "day":
        since = until - timedelta(days=DEFAULT_DAYS - 1)
    elif since is None:  # the Monday DEFAULT_WEEKS - 1 weeks before until's week
        since = until - timedelta(days=until.weekday() + 7 * (DEFAULT_WEEKS - 1))
    since = max(since, EARLIEST)
    if until < since:
        raise _invalid("until", f"until ({until}) is before since ({since})", until)
    # A longer range is cut to its most recent part (the reply's `since` says where it starts):
    # the limit depends on two fields together, which a schema cannot say, so it is not a 422.
    longest = MAX_DAYS if period == "day" else 7 * MAX_WEEKS
    if (until - since).days + 1 > longest:
        since = until - timedelta(days=longest - 1)
    return since, until


def _services(request: Request) -> tuple[InsightsReport, ContentGaps]:
    state = request.app.state
    if getattr(state, "insights", None) is None or getattr(state, "gaps", None) is None:
        raise HTTPException(503, "the server is starting; try again shortly")
    return state.insights, state.gaps


async def _audit(request: Request, who: Principal, action: str, **details: Any) -> None:
    audit: AuditLog = request.app.state.audit
    await audit.record(who.name, who.role, action, "", request.client.host if request.client else "", details)


@router.get("")
async def figures(
    request: Request,
    caller: AgentDep,
    period: Annotated[Period, Query(description="One row per day, or per Monday-to-Sunday week (UTC).")] = "day",
    since: SinceQuery = None,
    until: UntilQuery = None,
) -> dict[str, Any]:
    """Conversations, answers by path, resolution rate, ratings, handoffs by reason and time to
    first text (p50/p95) per period, and the same over the whole range (docs/agents.md)."""
    report, _ = _services(request)
    first, last = _range(period, since, until)
    result = await report.figures(period, first, last)
    return {"period": period, "since": first.isoformat(), "until": last.isoformat(), "timezone": "UTC", **result}


@router.get("/gaps")
async def content_gaps(
    request: Request,
    caller: AgentDep,
    since: SinceQuery = None,
    until: UntilQuery = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Groups returned, largest first.")] = 20,
) -> dict[str, Any]:
    """Questions the bot was not sure about, that were rated down, or after which the visitor
    asked for a person, grouped by meaning, with examples and the closest article."""
    _, gaps = _services(request)
    first, last = _range("day", since, until)
    result = await gaps.groups(first, last, limit=limit)
    await _audit(request, caller, "insights.gaps", since=first.isoformat(), until=last.isoformat(), questions=result["questions"])
    return {"since": first.isoformat(), "until": last.isoformat(), "timezone": "UTC", **result}
