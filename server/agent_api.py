"""REST for support agents and admins, and the public feedback endpoint.

Handlers translate HTTP to `bot/` calls (review, feedback, conversation status, exports)
and back; the services live on `app.state` (set up in server/app.py).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from bot.conversations import ConversationNotFound, ConversationStore, HeldByAnotherAgent
from bot.feedback import datasets
from bot.feedback.log import (
    EVENT_ID_PATTERN,
    MAX_COMMENT_CHARS,
    MAX_CORRECTION_CHARS,
    NON_BLANK_TEXT_PATTERN,
    TEXT_PATTERN,
    FeedbackError,
    FeedbackLog,
)
from bot.feedback.review import CURSOR_PATTERN, ConversationQuery, Review
from bot.privacy.audit import AuditLog
from bot.privacy.erasure import Privacy
from server.api_contract import ALWAYS, AUTH, Timestamp, errors
from server.auth import KEY_NAME_PATTERN, AdminDep, AgentDep, ApiKeys, Principal, Role
from server.limits import RateLimiter, feedback_bucket
from server.settings import Settings

router = APIRouter(prefix="/v1", responses=errors(*ALWAYS))
# A bare file name: no separators, not hidden, never two dots in a row.
EXPORT_NAME_PATTERN = r"^[A-Za-z0-9](\.?[A-Za-z0-9_-])*\.?$"
_EXPORT_NAME = re.compile(EXPORT_NAME_PATTERN)
MAX_AGENT_MESSAGE_CHARS = 4000


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeedbackIn(_Body):
    conversation_id: str = Field(max_length=64)
    message_id: str = Field(max_length=64)
    rating: Literal["up", "down"]
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS, pattern=TEXT_PATTERN)
    event_id: str | None = Field(None, pattern=EVENT_ID_PATTERN)


class CorrectionIn(_Body):
    text: str = Field(max_length=MAX_CORRECTION_CHARS, pattern=NON_BLANK_TEXT_PATTERN)
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS, pattern=TEXT_PATTERN)
    event_id: str | None = Field(None, pattern=EVENT_ID_PATTERN)


class AgentMessageIn(_Body):
    text: str = Field(max_length=MAX_AGENT_MESSAGE_CHARS, pattern=NON_BLANK_TEXT_PATTERN)


class KeyIn(_Body):
    role: Role
    name: str = Field(pattern=KEY_NAME_PATTERN, description="1-64 letters, digits, spaces or . @ ' - _")


class _ExportIn(_Body):
    name: str = Field(
        max_length=100, pattern=EXPORT_NAME_PATTERN, description="File name inside DATA_DIR/exports (letters, digits, . _ -)."
    )
    since: Timestamp | None = None
    until: Timestamp | None = None
    keep_pii: StrictBool = False
    after: str | None = Field(
        None, pattern=r"^([0-9]{1,20}(-[0-9]{1,20})?)?$", description="Watermark from an earlier export's manifest."
    )


class SftExportIn(_ExportIn):
    format: Literal["sft"]
    labels: list[Literal["up", "correction"]] = Field(default_factory=list, max_length=2)


class PreferenceExportIn(_ExportIn):
    format: Literal["preference"]
    labels: list[Literal["down", "correction"]] = Field(default_factory=list, max_length=2)


# The labels a format takes are in the schema, so a request it allows is one the export takes.
ExportIn = Annotated[SftExportIn | PreferenceExportIn, Field(discriminator="format")]


def _state(request: Request) -> tuple[Settings, ConversationStore, FeedbackLog, Review]:
    state = request.app.state
    if getattr(state, "review", None) is None:
        raise HTTPException(503, "the server is starting; try again shortly")
    return state.settings, state.store, state.feedback, state.review


async def _audit(request: Request, who: Principal, action: str, target: str = "", **details: Any) -> None:
    audit: AuditLog = request.app.state.audit
    source = request.client.host if request.client else ""
    await audit.record(who.name, who.role, action, target, source, details)


def _feedback_error(exc: FeedbackError) -> HTTPException:
    status = {"unknown_message": 404, "forbidden": 403}.get(exc.code, 422)
    return HTTPException(status, {"code": exc.code, "message": str(exc)})


def _not_found(conversation_id: str) -> HTTPException:
    return HTTPException(404, {"code": "unknown_conversation", "message": f"no conversation {conversation_id!r}"})


# ------------------------------------------------------------------ public
@router.post("/feedback", status_code=201, responses=errors(400, 403, 404, 429))
async def post_feedback(body: FeedbackIn, request: Request) -> dict[str, Any]:
    """A visitor rates an answer (the widget can also do this over the websocket)."""
    settings, _, feedback, _ = _state(request)
    client = request.client.host if request.client else "unknown"
    limiter: RateLimiter = request.app.state.limiter
    wait = await limiter.take(feedback_bucket(client, settings))
    if wait:
        raise HTTPException(429, {"code": "rate_limited", "message": f"too much feedback; retry in {wait:.0f} s"},
                            headers={"Retry-After": str(max(1, round(wait)))})  # fmt: skip
    try:
        submitted = await feedback.submit(
            body.conversation_id,
            body.message_id,
            actor_role="user",
            actor_id=f"visitor:{body.conversation_id}",
            rating=body.rating,
            comment=body.comment,
            event_id=body.event_id,
        )
    except ConversationNotFound:
        raise _not_found(body.conversation_id) from None
    except FeedbackError as exc:
        raise _feedback_error(exc) from None
    if not submitted.duplicate:
        request.app.state.metrics.feedback.labels(body.rating).inc()
    return {"event_id": submitted.event_id, "duplicate": submitted.duplicate}


# ------------------------------------------------------------------ agents
@router.get("/agent/me", responses=errors(*AUTH))
async def me(principal: AgentDep) -> dict[str, str]:
    return {"name": principal.name, "role": principal.role, "key_id": principal.key_id}


@router.get("/agent/conversations", responses=errors(*AUTH))
async def list_conversations(
    request: Request,
    caller: AgentDep,
    since: Annotated[Timestamp | None, Query(description="Last activity at or after (ISO 8601).")] = None,
    until: Annotated[Timestamp | None, Query(description="Last activity before (ISO 8601).")] = None,
    status: Annotated[Literal["bot", "handoff", "closed"] | None, Query()] = None,
    waiting: Annotated[bool | None, Query(description="Asked for a person and no agent has taken it yet.")] = None,
    rating: Annotated[Literal["up", "down"] | None, Query(description="Has an answer whose latest rating is this.")] = None,
    corrected: Annotated[bool | None, Query()] = None,
    low_confidence: Annotated[float | None, Query(ge=0, le=1, description="Has an answer below this confidence.")] = None,
    path: Annotated[
        Literal["composed", "generated", "fallback", "not_sure", "error", "cancelled", "human_requested", "busy", "small_talk"]
        | None,
        Query(),
    ] = None,
    q: Annotated[str | None, Query(max_length=200, description="Words that must all appear in its messages.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN, description="`next_cursor` of the page before.")] = None,
) -> dict[str, Any]:
    """Conversations, most recently active first, filtered; `next_cursor` fetches the next page."""
    _, _, _, review = _state(request)
    query = ConversationQuery(
        since=since.timestamp() if since else None,
        until=until.timestamp() if until else None,
        status=status,
        waiting=waiting,
        rating=rating,
        corrected=corrected,
        low_confidence=low_confidence,
        path=path,
        text=q,
        limit=limit,
        cursor=cursor,
    )
    try:
        page = await review.search(query)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    await _audit(request, caller, "conversations.list", q=q or "", results=len(page.items))
    return {
        "conversations": [
            {**dataclasses.asdict(item.conversation), "ratings": item.ratings, "preview": item.preview} for item in page.items
        ],
        "next_cursor": page.next_cursor,
    }


@router.get("/agent/conversations/{conversation_id}", responses=errors(*AUTH, 404))
async def transcript(conversation_id: str, request: Request, caller: AgentDep) -> dict[str, Any]:
    """Every turn with its sources, confidence, path, timings, model, and feedback."""
    _, _, _, review = _state(request)
    try:
        found = await review.transcript(conversation_id)
    except ConversationNotFound:
        raise _not_found(conversation_id) from None
    await _audit(request, caller, "transcript.read", conversation_id)
    return {"conversation": dataclasses.asdict(found["conversation"]), "messages": found["messages"]}


@router.post(
    "/agent/conversations/{conversation_id}/messages/{message_id}/correction",
    status_code=201,
    responses=errors(400, *AUTH, 404),
)
async def correct(conversation_id: str, message_id: str, body: CorrectionIn, request: Request, agent: AgentDep) -> dict[str, Any]:
    """Attach a corrected answer to one of the bot's answers (a training example)."""
    _, _, feedback, _ = _state(request)
    try:
        submitted = await feedback.submit(
            conversation_id,
            message_id,
            actor_role="agent",
            actor_id=agent.name,
            correction=body.text,
            comment=body.comment,
            event_id=body.event_id,
        )
    except ConversationNotFound:
        raise _not_found(conversation_id) from None
    except FeedbackError as exc:
        raise _feedback_error(exc) from None
    if not submitted.duplicate:
        request.app.state.metrics.feedback.labels("correction").inc()
        await _audit(request, agent, "feedback.correct", conversation_id, message_id=message_id, event_id=submitted.event_id)
    return {"event_id": submitted.event_id, "duplicate": submitted.duplicate}


async def _status(request: Request, conversation_id: str, action: str, agent: Principal) -> dict[str, Any]:
    _, store, _, _ = _state(request)
    try:
        change = await store.change_status(conversation_id, action, agent=agent.name)
    except ConversationNotFound:
        raise _not_found(conversation_id) from None
    except HeldByAnotherAgent as exc:
        raise HTTPException(409, {"code": "held_by_another_agent", "message": str(exc), "agent": exc.agent}) from None
    if change.changed:
        request.app.state.metrics.handoffs.labels(action).inc()
        await _audit(request, agent, f"conversation.{action}", conversation_id)
    return {"status": change.status, "agent": change.agent or None, "changed": change.changed}


@router.post("/agent/conversations/{conversation_id}/takeover", responses=errors(*AUTH, 404, 409))
async def take_over(conversation_id: str, request: Request, agent: AgentDep) -> dict[str, Any]:
    """The bot falls silent; the visitor sees that `agent` has joined."""
    return await _status(request, conversation_id, "takeover", agent)


@router.post("/agent/conversations/{conversation_id}/handback", responses=errors(*AUTH, 404, 409))
async def hand_back(conversation_id: str, request: Request, agent: AgentDep) -> dict[str, Any]:
    """The bot answers again."""
    return await _status(request, conversation_id, "handback", agent)


@router.post("/agent/conversations/{conversation_id}/close", responses=errors(*AUTH, 404, 409))
async def close(conversation_id: str, request: Request, agent: AgentDep) -> dict[str, Any]:
    return await _status(request, conversation_id, "close", agent)


@router.post("/agent/conversations/{conversation_id}/messages", status_code=201, responses=errors(400, *AUTH, 404, 409))
async def agent_message(conversation_id: str, body: AgentMessageIn, request: Request, agent: AgentDep) -> dict[str, Any]:
    """Write to the visitor (after taking the conversation over); it reaches their open widget live."""
    _, store, _, _ = _state(request)
    text = body.text.strip()
    if not text:
        raise HTTPException(422, {"code": "empty_message", "message": "the message is empty"})
    try:
        message_id, seq = await store.add_agent_message(conversation_id, agent.name, text)
    except ConversationNotFound:
        raise _not_found(conversation_id) from None
    except HeldByAnotherAgent as exc:
        raise HTTPException(409, {"code": "held_by_another_agent", "message": str(exc), "agent": exc.agent}) from None
    except PermissionError as exc:
        raise HTTPException(409, {"code": "not_taken_over", "message": str(exc)}) from None
    await _audit(request, agent, "conversation.message", conversation_id, message_id=message_id)
    return {"message_id": message_id, "seq": seq}


# ------------------------------------------------------------------ admins
@router.get("/admin/keys", responses=errors(*AUTH))
async def list_keys(request: Request, caller: AdminDep) -> dict[str, Any]:
    keys: ApiKeys = request.app.state.keys
    return {"keys": [dataclasses.asdict(k) for k in await keys.list()]}


@router.post("/admin/keys", status_code=201, responses=errors(400, *AUTH))
async def create_key(body: KeyIn, request: Request, caller: AdminDep) -> dict[str, Any]:
    """The key is in this response only; it is stored hashed."""
    keys: ApiKeys = request.app.state.keys
    try:
        info, key = await keys.create(body.role, body.name)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    await _audit(request, caller, "key.create", info.key_id, role=info.role, name=info.name)
    return {**dataclasses.asdict(info), "key": key}


@router.delete("/admin/keys/{key_id}", responses=errors(*AUTH, 404))
async def revoke_key(key_id: str, request: Request, caller: AdminDep) -> dict[str, Any]:
    keys: ApiKeys = request.app.state.keys
    if not await keys.revoke(key_id):
        raise HTTPException(404, f"no key {key_id!r}")
    await _audit(request, caller, "key.revoke", key_id)
    return {"revoked": key_id}


def _export_path(settings: Settings, name: str) -> Path:
    """A file directly inside the exports directory: no separators, no `..`, no hidden files."""
    if len(name) > 100 or not _EXPORT_NAME.match(name):
        raise HTTPException(422, {"code": "invalid_name", "message": "name must be letters, digits, '.', '_' or '-' "
                                  "(no path separators, no '..', not starting with '.')"})  # fmt: skip
    root = settings.exports_dir.resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise HTTPException(422, {"code": "invalid_name", "message": "the export must stay inside the exports directory"})
    return path


@router.post("/admin/exports", status_code=201, responses=errors(400, *AUTH))
async def create_export(body: ExportIn, request: Request, caller: AdminDep) -> dict[str, Any]:
    """Write a dataset from the feedback files into DATA_DIR/exports/NAME (plus NAME.manifest.json)."""
    settings, _, _, _ = _state(request)
    path = _export_path(settings, body.name)
    options = datasets.ExportOptions(
        body.format,
        since=body.since.timestamp() if body.since else None,
        until=body.until.timestamp() if body.until else None,
        labels=tuple(body.labels),
        keep_pii=body.keep_pii,
        after=body.after,
    )

    def run() -> dict[str, Any]:
        events, _ = datasets.read_events(settings.feedback_dir, request.app.state.sealer)
        export = datasets.build(events, options)
        datasets.write(export, path)
        return export.manifest

    try:
        manifest = await run_in_threadpool(run)
    except datasets.ExportError as exc:
        raise HTTPException(422, {"code": "invalid_export", "message": str(exc)}) from None
    await _audit(
        request, caller, "export.create", path.name, format=body.format, records=manifest["records"], pii=not body.keep_pii
    )
    return {"name": path.name, "manifest": manifest}


@router.get(
    "/admin/exports/{name}",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/x-ndjson": {}}, "description": "The export, one JSON object a line."},
        **errors(*AUTH, 404),
    },
)
async def download_export(
    name: Annotated[str, PathParam(max_length=100, pattern=EXPORT_NAME_PATTERN)], request: Request, caller: AdminDep
) -> FileResponse:
    settings, _, _, _ = _state(request)
    path = _export_path(settings, name)
    if not path.is_file():
        raise HTTPException(404, f"no export {name!r}")
    await _audit(request, caller, "export.download", path.name)
    return FileResponse(path, media_type="application/x-ndjson", filename=path.name)


class EraseConversationIn(_Body):
    conversation_id: str = Field(max_length=64)
    dry_run: StrictBool = False


class EraseUserIn(_Body):
    user_id: str = Field(min_length=1, max_length=128)
    dry_run: StrictBool = False


@router.post("/admin/privacy/erase", responses=errors(400, *AUTH, 404))
async def erase(body: EraseConversationIn | EraseUserIn, request: Request, caller: AdminDep) -> dict[str, Any]:
    """Delete a visitor's conversations, messages, feedback events and sink-file lines; report what went.

    The body names exactly one of `conversation_id` and `user_id` (both, or neither, is 422)."""
    _, store, _, _ = _state(request)
    privacy: Privacy = request.app.state.privacy
    if isinstance(body, EraseConversationIn):
        try:
            await store.get(body.conversation_id)
        except ConversationNotFound:
            raise _not_found(body.conversation_id) from None
        ids, target = [body.conversation_id], body.conversation_id
    else:
        ids, target = await privacy.conversations_of_user(body.user_id), f"user:{body.user_id}"
        if not ids:
            raise HTTPException(
                404, {"code": "unknown_user", "message": f"no conversations of user {body.user_id!r}; nothing changed"}
            )
    report = await privacy.erase(ids, dry_run=body.dry_run)
    if not body.dry_run:
        await _audit(request, caller, "privacy.erase", target, **{k: v for k, v in report.as_dict().items() if k != "dry_run"})
    return report.as_dict()


@router.get("/admin/audit", responses=errors(*AUTH))
async def audit_trail(
    request: Request,
    caller: AdminDep,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=40)] = None,
    target: Annotated[str | None, Query(max_length=140)] = None,
    since: Annotated[Timestamp | None, Query(description="At or after (ISO 8601).")] = None,
    until: Annotated[Timestamp | None, Query(description="Before (ISO 8601).")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Who did what, newest first: transcript reads, exports, takeovers, erasures, key changes."""
    audit: AuditLog = request.app.state.audit
    entries = await audit.list(
        actor=actor,
        action=action,
        target=target,
        since=since.timestamp() if since else None,
        until=until.timestamp() if until else None,
        limit=limit,
    )
    return {"entries": [dataclasses.asdict(e) for e in entries]}
