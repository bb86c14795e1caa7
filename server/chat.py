"""`ws /v1/chat`: the chat protocol (docs/protocol.md) over the assistant and Redis state.

Each connection runs two tasks: a reader that validates and handles client frames, and a
forwarder that sends the conversation's sequenced events (answer tokens, sources, done,
handoff, agent messages) in order. Answers are appended to Redis as they stream and
published to every worker (server/events.py), so whichever socket or worker a client is
on, and after any reconnect, it gets the same numbered frames: resume is "send me
everything after seq N", read from the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from redis.exceptions import RedisError
from starlette.websockets import WebSocketState

from bot.assistant import FRUSTRATION_REASONS, AnswerDelta, AnswerPath, Assistant, TurnDone
from bot.conversations import ConversationNotFound, ConversationStore, TurnStart
from bot.feedback.log import EVENT_ID_PATTERN, MAX_COMMENT_CHARS, FeedbackError, FeedbackLog
from bot.prompt import HistoryTurn
from server.events import EventHub
from server.limits import RateLimiter, feedback_bucket
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger("supportbot.chat")

PROTOCOL_VERSION = 1
HISTORY_TURNS = 12  # most recent messages offered to the prompt builder (it trims to fit)
OUTBOX_FRAMES = 4096  # live frames queued for one socket; a client this far behind is closed and resumes
# The one-answer lock expires this soon unless its worker renews it (every third of it): an
# answer whose worker died frees the conversation in seconds, not at the generator's timeout.
ANSWER_LOCK_TTL_S = 6.0
# A lock whose holder is gone (server/events.py) is taken over only once this worker's own
# live-events connection has been up this long: after a Redis restart, live workers need up
# to a second to resubscribe, and until then they look gone.
TAKEOVER_SETTLE_S = 2.0
ORPHAN_POLL_S = 0.25  # how often a resent message's watcher looks at the lock


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    v: Literal[1] = 1


class StartFrame(_Frame):
    type: Literal["start"]
    conversation_id: str | None = Field(None, max_length=64)
    last_seq: int | None = Field(None, ge=0)
    user_id: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[\w.@:+-]+$")


class MessageFrame(_Frame):
    type: Literal["message"]
    client_message_id: str = Field(min_length=1, max_length=64)
    text: str


class CancelFrame(_Frame):
    type: Literal["cancel"]


class RateFrame(_Frame):
    type: Literal["rate"]
    message_id: str = Field(max_length=64)
    rating: Literal["up", "down"]
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS)
    event_id: str | None = Field(None, pattern=EVENT_ID_PATTERN)


class HandoffFrame(_Frame):
    type: Literal["handoff"]


class PingFrame(_Frame):
    type: Literal["ping"]


ClientFrame = Annotated[
    StartFrame | MessageFrame | CancelFrame | RateFrame | HandoffFrame | PingFrame, Field(discriminator="type")
]
_FRAMES: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)
FRAME_TYPES = ("start", "message", "cancel", "rate", "handoff", "ping")


class FrameError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_frame(raw: str) -> ClientFrame:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise FrameError("bad_json", f"frame is not valid JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(data, dict):
        raise FrameError("invalid_frame", f"a frame must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if kind not in FRAME_TYPES:
        raise FrameError("unknown_type", f"unknown frame type {kind!r}; expected one of {', '.join(FRAME_TYPES)}")
    if data.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise FrameError("unsupported_version", f"protocol version {data.get('v')!r} is not supported; this server speaks v1")
    try:
        return _FRAMES.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"][1:]) or "frame"
        raise FrameError("invalid_frame", f"{where}: {first['msg']}") from None


class ChatService:
    """Shared by all connections of one worker."""

    def __init__(
        self,
        settings: Settings,
        store: ConversationStore,
        assistant: Assistant,
        metrics: Metrics,
        events: EventHub,
        feedback: FeedbackLog,
        limiter: RateLimiter,
    ) -> None:
        self.events = events
        self.feedback = feedback
        self.settings = settings
        self.store = store
        self.assistant = assistant
        self.metrics = metrics
        self.limiter = limiter
        self.connections: set[Connection] = set()
        self.draining = False
        # Answers whose visitor's socket dropped: they go on for the grace period (keep_answering).
        self.detached: dict[str, asyncio.Task[None]] = {}
        # Answers whose socket closed while this worker drains: the drain waits for them too.
        self.finishing: set[asyncio.Task[None]] = set()
        self.turns_beginning = 0  # message frames past the drain check whose answer task may not exist yet
        self._watchers: set[asyncio.Task[None]] = set()
        events.on_cancel = self.cancel_answer

    async def handle(self, ws: WebSocket) -> None:
        origin = ws.headers.get("origin")
        host = ws.headers.get("host", "")
        same_origin = origin in (f"http://{host}", f"https://{host}")  # the demo page and widget served here
        if origin is not None and not same_origin and origin not in self.settings.allowed_origins:
            self.metrics.connections_refused.labels("origin").inc()
            log.warning("refused websocket from origin %r", origin)
            await ws.close(code=1008, reason="origin not allowed")  # before accept: the upgrade gets HTTP 403
            return
        # These two are accepted and then closed, so the client reads a close code it can act on
        # (a refused upgrade reaches browser code only as 1006).
        if self.draining:
            self.metrics.connections_refused.labels("shutting_down").inc()
            await ws.accept()
            await ws.close(code=1001, reason="server shutting down")
            return
        if len(self.connections) >= self.settings.ws_max_connections:
            self.metrics.connections_refused.labels("capacity").inc()
            await ws.accept()
            await ws.close(code=1013, reason="too many connections, try again later")
            return
        await ws.accept()
        connection = Connection(self, ws)
        self.connections.add(connection)
        self.metrics.connections.inc()
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)
            self.metrics.connections.dec()

    async def drain(self, timeout_s: float) -> None:
        """Refuse new connections and new messages, let the answers in flight finish, then
        close every socket (1001).

        A message that arrives on an open socket while the worker drains is not stored: its
        socket is closed (1001) at once, and the widget resends it to the next server. Stored,
        its answer would begin here and be cut off when the drain closes the sockets. Every
        answer begun before (or by a message frame already being handled when the drain
        began) finishes and is stored, up to the deadline, whatever happens to its socket."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        announced = False
        while (answers := self._answers_in_flight()) or self.turns_beginning:
            left = deadline - time.monotonic()
            if left <= 0:
                for task in answers:
                    task.cancel()
                if answers:  # bounded: each stores what it had streamed, as `cancelled`
                    await asyncio.wait(answers, timeout=5)
                break
            if not announced and answers:
                log.info("draining: waiting up to %.1f s for %d answers", left, len(answers))
                announced = True
            if answers:
                # Woken by the first to finish, or soon: a turn being begun now adds its answer.
                await asyncio.wait(answers, timeout=min(left, 0.25), return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(min(left, 0.02))
        for connection in list(self.connections):
            await connection.close(1001, "server shutting down")

    def _answers_in_flight(self) -> list[asyncio.Task[None]]:
        answers = {c.answer for c in self.connections if c.answer is not None}
        answers |= {*self.detached.values(), *self.finishing}
        return [task for task in answers if not task.done()]

    def finish_while_draining(self, answer: asyncio.Task[None]) -> None:
        """An answer whose socket closed during the drain: it goes on (the drain waits for it
        until its deadline) and is stored in full, so the visitor's resume on the next server
        replays all of it."""
        self.finishing.add(answer)
        answer.add_done_callback(self.finishing.discard)

    def keep_answering(self, conversation_id: str, answer: asyncio.Task[None]) -> None:
        """The visitor's socket dropped mid-answer (a phone changing networks): the answer goes
        on, written to the conversation's stream, so a widget that reconnects and resumes gets
        all of it, on any worker. It is cancelled when a grace period passes with no socket on
        the conversation anywhere, or when the visitor sends `cancel`."""
        self.detached[conversation_id] = answer
        watcher = asyncio.create_task(self._watch_detached(conversation_id, answer), name=f"grace-{conversation_id}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch_detached(self, conversation_id: str, answer: asyncio.Task[None]) -> None:
        try:
            while True:
                done, _ = await asyncio.wait({answer}, timeout=self.settings.answer_grace_s)
                if done:
                    return
                if not await self.events.listened(conversation_id):
                    log.info("nobody came back for the answer; cancelling it", extra={"conversation_id": conversation_id})
                    answer.cancel()
                    return
        finally:
            if self.detached.get(conversation_id) is answer:
                del self.detached[conversation_id]

    def cancel_answer(self, conversation_id: str) -> bool:
        """Cancel the answer this worker is writing in the conversation, if it writes one."""
        answers = [self.detached.get(conversation_id)]
        answers += [c.answer for c in self.connections if c.conversation_id == conversation_id]
        for answer in answers:
            if answer is not None and not answer.done():
                answer.cancel()
                return True
        return False


class Connection:
    def __init__(self, service: ChatService, ws: WebSocket) -> None:
        self.service = service
        self.ws = ws
        self.settings = service.settings
        self.store = service.store
        self.client = ws.client.host if ws.client else "unknown"
        self.connection_id = uuid.uuid4().hex[:12]
        self.conversation_id: str | None = None
        self.answer: asyncio.Task[None] | None = None
        # This connection's answer has had its `done` stored or forwarded to the visitor, who may
        # reply before the answer task has released its lock.
        self._done_sent = False
        self._answering = ""  # the id of this connection's latest answer
        # The lock token of an answer whose release failed (Redis went away as it finished):
        # the next message from this connection releases it instead of getting `busy` until
        # the lock lapses.
        self._unreleased_lock = ""
        self._unanswered: asyncio.Task[None] | None = None  # watches a resent message's answer (_answer_if_orphaned)
        self._forwarder: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._sent_seq = 0
        self._received = 0.0  # when the frame being handled arrived
        self._inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=OUTBOX_FRAMES)

    # ---------------------------------------------------------------- sending
    async def send(self, frame: dict[str, Any]) -> None:
        async with self._send_lock:
            if self.ws.application_state != WebSocketState.CONNECTED:
                return
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await self.ws.send_text(json.dumps({"v": PROTOCOL_VERSION, **frame}, ensure_ascii=False))

    async def error(self, code: str, message: str, **extra: Any) -> None:
        self.service.metrics.errors.labels(code).inc()
        log.info("error frame", extra={"conversation_id": self.conversation_id, "code": code})
        await self.send({"type": "error", "code": code, "message": message, **extra})

    async def close(self, code: int, reason: str) -> None:
        async with self._send_lock:
            if self.ws.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                    await self.ws.close(code=code, reason=reason)

    # ---------------------------------------------------------------- the reader
    async def run(self) -> None:
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.ws.receive(), self.settings.ws_idle_timeout_s)
                except TimeoutError:
                    await self.close(1000, "idle timeout")
                    return
                if message["type"] == "websocket.disconnect":
                    return
                self._received = time.perf_counter()
                text = message.get("text")
                frame: ClientFrame | None = None
                problem: FrameError | None = None
                try:
                    if text is None:
                        raise FrameError("binary_not_supported", "frames must be UTF-8 JSON text, not binary")
                    frame = parse_frame(text)
                except FrameError as exc:
                    problem = exc
                # A message takes its rate tokens inside the script that begins its turn (one
                # round trip on the hot path); every other frame, bad ones too, takes them here.
                if not (isinstance(frame, MessageFrame) and self.conversation_id is not None) and not await self._within_rate():
                    continue
                if problem is not None or frame is None:
                    assert problem is not None
                    await self.error(problem.code, str(problem))
                    continue
                self.service.metrics.frames.labels(frame.type).inc()
                try:
                    await self._dispatch(frame)
                except ConversationNotFound:
                    await self.error("unknown_conversation", f"conversation {self.conversation_id} has expired; start a new one")
                except RedisError as exc:
                    log.warning("redis unavailable: %s", exc, extra={"conversation_id": self.conversation_id})
                    await self.error("unavailable", "the service is temporarily unavailable; please retry in a few seconds")
        except WebSocketDisconnect:
            return
        finally:
            answer = self.answer
            if answer is not None and not answer.done() and self.conversation_id is not None:
                if self.service.draining:
                    self.service.finish_while_draining(answer)
                    self.answer = None
                elif self.settings.answer_grace_s > 0:
                    self.service.keep_answering(self.conversation_id, answer)
                    self.answer = None
            tasks = [t for t in (self.answer, self._forwarder, self._unanswered) if t is not None and not t.done()]
            for task in tasks:
                task.cancel()
            if tasks:  # bounded: a task stuck on a dead peer must not hold up shutdown
                await asyncio.wait(tasks, timeout=5)
            if self.conversation_id is not None:
                await self.service.events.unsubscribe(self.conversation_id, self._on_event)

    def _frame_buckets(self) -> tuple[tuple[str, float, int], ...]:
        s = self.settings
        return (
            (f"conn:{self.connection_id}", s.rate_frames_per_s, s.rate_burst),
            (f"client:{self.client}", s.rate_client_frames_per_s, s.rate_client_burst),
        )

    async def _within_rate(self) -> bool:
        try:
            wait = await self.service.limiter.take(*self._frame_buckets())
        except RedisError:
            return True  # without Redis the frame itself will get "unavailable"; do not add a second error
        if wait:
            await self._rate_limited(wait)
            return False
        return True

    async def _rate_limited(self, wait: float) -> None:
        await self.error("rate_limited", f"too many frames; retry in {wait:.1f} s", retry_after_s=round(wait, 2))

    async def _dispatch(self, frame: ClientFrame) -> None:
        if isinstance(frame, PingFrame):
            await self.send({"type": "pong", "time": time.time()})
        elif isinstance(frame, StartFrame):
            await self._start(frame)
        elif self.conversation_id is None:
            await self.error("not_started", "send a start frame first")
        elif isinstance(frame, MessageFrame):
            if self.service.draining:
                # Not stored: the widget resends it (same client_message_id) once it has reconnected
                # to a server that is not stopping. Its answer begun here would be cut off.
                log.info(
                    "message during the drain: closing the socket for a resend", extra={"conversation_id": self.conversation_id}
                )
                await self.close(1001, "server shutting down")
                return
            self.service.turns_beginning += 1
            try:
                await self._message(frame)
            finally:
                self.service.turns_beginning -= 1
        elif isinstance(frame, CancelFrame):
            if self.service.cancel_answer(self.conversation_id):
                pass  # written on this worker: by this socket, another one, or one that dropped
            elif await self.store.answer_streaming(self.conversation_id):
                await self.service.events.request_cancel(self.conversation_id)  # on another worker
            else:
                await self.error("nothing_to_cancel", "no answer is streaming in this conversation")
        elif isinstance(frame, RateFrame):
            await self._rate(frame)
        elif isinstance(frame, HandoffFrame):
            change = await self.store.change_status(self.conversation_id, "request", reason="requested")
            self.service.metrics.handoffs.labels("request").inc()
            if not change.changed:  # already waiting or with an agent: say so (unsequenced; nothing was stored)
                await self.send({"type": "status", "status": change.status, "agent": change.agent or None, "reason": "unchanged"})

    async def _start(self, frame: StartFrame) -> None:
        if self.conversation_id is not None:
            await self.error("already_started", f"this connection is already on conversation {self.conversation_id}")
            return
        if frame.conversation_id is None:
            hourly = self.settings.conversations_per_client_per_hour
            wait = await self.service.limiter.take((f"newconv:{self.client}", hourly / 3600, hourly))
            if wait:
                await self.error("too_many_conversations", f"too many new conversations from this address; retry in {wait:.0f} s")
                return
            user_agent = self.ws.headers.get("user-agent", "")[:200]
            conversation = await self.store.create(
                client={"address": self.client, "user_agent": user_agent}, user_id=frame.user_id
            )
            log.info("conversation started", extra={"conversation_id": conversation.id})
        else:
            try:
                conversation = await self.store.get(frame.conversation_id)
            except ConversationNotFound:
                await self.error("unknown_conversation", f"no conversation {frame.conversation_id!r} (it may have expired)")
                return
        self.conversation_id = conversation.id
        resume_from = conversation.last_seq if frame.last_seq is None else min(frame.last_seq, conversation.last_seq)
        await self.send(
            {
                "type": "ready",
                "conversation_id": conversation.id,
                "status": conversation.status,
                "last_seq": conversation.last_seq,
                "history": [_public(m) for m in await self.store.messages(conversation.id)],
                # The widget shows these unless the site's script tag sets data-title / data-greeting.
                "assistant": {"name": self.settings.assistant_name, "greeting": self.settings.greeting},
            }
        )
        self._sent_seq = resume_from
        await self.service.events.subscribe(conversation.id, self._on_event)
        self._inbox.put_nowait(None)  # read what came after resume_from from the stream
        self._forwarder = asyncio.create_task(self._forward(), name=f"forward-{conversation.id}")

    async def _message(self, frame: MessageFrame) -> None:
        assert self.conversation_id is not None
        text = frame.text.strip()
        limit = self.settings.answer_max_message_chars
        if (not text or len(text) > limit) and not await self._within_rate():
            return
        if not text:
            await self.error("empty_message", "the message is empty", client_message_id=frame.client_message_id)
            return
        if len(text) > limit:
            await self.error(
                "message_too_long",
                f"the message is {len(text)} characters; the limit is {limit}",
                client_message_id=frame.client_message_id,
            )
            return
        answer_id = f"m_{uuid.uuid4().hex}"
        user = {"id": f"u_{uuid.uuid4().hex}", "role": "user", "text": text, "client_message_id": frame.client_message_id}

        async def begin() -> TurnStart:
            assert self.conversation_id is not None
            return await self.store.begin_turn(
                self.conversation_id,
                client_message_id=frame.client_message_id,
                answer_id=answer_id,
                user_message={**user, "created": time.time()},
                event={
                    "type": "user_message",
                    "message_id": user["id"],
                    "text": text,
                    "client_message_id": frame.client_message_id,
                },
                lock_ttl_s=ANSWER_LOCK_TTL_S,
                history=HISTORY_TURNS,
                guard=self.service.limiter.guard(*self._frame_buckets()),
                holder=self.service.events.worker_id,
            )

        turn = await begin()
        previous = self.answer
        if turn.outcome == "busy" and self._done_sent and previous is not None and not previous.done():
            # This connection's last answer has sent `done` and is only recording and releasing
            # its lock: a visitor who replies at once is not "busy" (a composed answer takes
            # milliseconds). Bounded, and only in that state, so a cancel is never held up.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(previous), 2)
            turn = await begin()
        if turn.outcome == "busy" and self._unreleased_lock and (previous is None or previous.done()):
            # The lock is this connection's own, left by an answer that has finished: release it
            # (by its token, so a lock anyone else has taken since stays) and begin again.
            lock, self._unreleased_lock = self._unreleased_lock, ""
            with contextlib.suppress(RedisError):
                await self.store.unlock_answer(self.conversation_id, lock)
                turn = await begin()
        if turn.outcome == "limited":
            await self._rate_limited(turn.retry_after_s)
            return
        if turn.outcome == "duplicate":
            await self.send(
                {"type": "duplicate", "client_message_id": frame.client_message_id, "message_id": turn.earlier_answer_id}
            )
            if self._unanswered is None or self._unanswered.done():
                self._unanswered = asyncio.create_task(
                    self._answer_if_orphaned(frame.client_message_id, turn.earlier_answer_id, text),
                    name=f"orphan-{turn.earlier_answer_id}",
                )
            return
        if turn.outcome == "busy":
            await self.error(
                "busy", "an answer is still streaming in this conversation", client_message_id=frame.client_message_id
            )
            return
        if not turn.lock_token:
            return  # a human agent has this conversation: the message is stored and forwarded, the bot stays silent
        self._start_answer(answer_id, text, turn)

    def _start_answer(self, answer_id: str, text: str, turn: TurnStart) -> None:
        history = [HistoryTurn("user" if m["role"] == "user" else "assistant", m["text"]) for m in turn.history]
        self._done_sent = False
        self._answering = answer_id
        self.answer = asyncio.create_task(
            self._answer(answer_id, text, history, turn.lock_token, self._received), name=f"answer-{answer_id}"
        )

    async def _answer_if_orphaned(self, client_message_id: str, answer_id: str, text: str) -> None:
        """A resent message (`duplicate`) whose answer may never come: the worker writing it died
        (SIGKILL, a Redis outage mid-answer). Watch the lock: once it is free (a lock lapses
        within ANSWER_LOCK_TTL_S unless renewed), or its holder's process is gone (it names
        the worker, whose subscription ends with it: server/events.py), an answer that was
        not stored is written here, under the id the visitor was given. Bounded by the
        longest an answer may take."""
        assert self.conversation_id is not None
        cid, events = self.conversation_id, self.service.events
        deadline = time.monotonic() + self.settings.generator_timeout_s + 2 * ANSWER_LOCK_TTL_S
        while time.monotonic() < deadline and not self.service.draining:
            # A draining worker begins no answer: the drain closes this socket, and the resend
            # after the reconnect watches from the next server.
            self.service.turns_beginning += 1
            try:
                turn = await self.store.reclaim_turn(
                    cid,
                    client_message_id,
                    answer_id,
                    lock_ttl_s=ANSWER_LOCK_TTL_S,
                    history=HISTORY_TURNS,
                    holder=events.worker_id,
                    take_over=events.listening_for(TAKEOVER_SETTLE_S),
                )
                if turn.outcome == "ok":
                    log.info(
                        "answering a message whose answer was never stored",
                        extra={"conversation_id": cid, "took_over_from": turn.replaced or None},
                    )
                    self._start_answer(answer_id, text, turn)
                if turn.outcome != "busy":
                    return
            except RedisError:  # Redis restarting (this is how the answer got lost, often): keep watching
                pass
            finally:
                self.service.turns_beginning -= 1
            await asyncio.sleep(ORPHAN_POLL_S)

    async def _keep_lock(self, conversation_id: str, lock: str) -> None:
        while True:
            await asyncio.sleep(ANSWER_LOCK_TTL_S / 3)
            with contextlib.suppress(RedisError):
                if not await self.store.extend_answer_lock(conversation_id, lock, ANSWER_LOCK_TTL_S):
                    log.warning("the answer lock expired while answering", extra={"conversation_id": conversation_id})
                    return

    async def _answer(self, answer_id: str, text: str, history: list[HistoryTurn], lock: str, received: float) -> None:
        assert self.conversation_id is not None
        cid, store, metrics = self.conversation_id, self.store, self.service.metrics
        keeper = asyncio.create_task(self._keep_lock(cid, lock), name=f"lock-{answer_id}")
        parts: list[str] = []
        result = None
        recorded = False
        first_sent: float | None = None
        try:
            async with contextlib.aclosing(self.service.assistant.respond(text, history)) as events:
                async for event in events:
                    if isinstance(event, AnswerDelta):
                        parts.append(event.text)
                        await store.append_event(cid, {"type": "token", "message_id": answer_id, "delta": event.text})
                        if first_sent is None:
                            first_sent = time.perf_counter()
                            metrics.time_to_first_token.observe(first_sent - received)
                    elif isinstance(event, TurnDone):
                        result = event.result
            assert result is not None
            sources = [
                {"title": s.title, "url": s.url, "document_id": s.document_id, "snippet": s.snippet, "score": round(s.score, 4)}
                for s in result.sources
            ]
            timings = {
                "time_to_first_token_s": result.time_to_first_token_s,
                "generator_ttft_s": result.generator_ttft_s,
                "retrieval_s": result.retrieval_s,
                "total_s": result.total_s,
                # Time to the first token frame that the assistant (retrieval, generation, grounding) did not spend.
                "server_overhead_s": (
                    first_sent - received - result.time_to_first_token_s
                    if first_sent is not None and result.time_to_first_token_s is not None
                    else None
                ),
            }
            record = {
                "id": answer_id,
                "role": "assistant",
                "text": result.answer,
                "sources": sources,
                "confidence": round(result.confidence, 4),
                "path": str(result.path),
                "handoff": result.handoff,
                "handoff_reason": result.handoff_reason,
                "model_id": result.model_id,
                "prompt_version": result.prompt_version,
                "passages": [dataclasses.asdict(e) for e in result.evidence],
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "timings": timings,
                "created": time.time(),
            }
            done = {
                "type": "done",
                "message_id": answer_id,
                "path": str(result.path),
                "confidence": record["confidence"],
                "model_id": result.model_id,
                "timings": timings,
            }
            # Stored and announced in one step (bot/conversations.py, _ADD_MESSAGE).
            write = asyncio.ensure_future(
                store.add_message(cid, record, [{"type": "sources", "message_id": answer_id, "sources": sources}, done])
            )
            try:
                await asyncio.shield(write)
            finally:
                # A cancel (a drain's deadline, a closing widget) while the script runs must not
                # cut the wait short: Redis runs a script it was sent either way, and the handler
                # below would store this answer a second time, as "cancelled" (the chaos run
                # found both under one id). So wait for the write, and go by what it did.
                if not write.done():
                    await asyncio.wait([write], timeout=ANSWER_LOCK_TTL_S)  # bounded: a shutdown must not hang on it
                recorded = not write.cancelled() and write.exception() is None
                self._done_sent = self._done_sent or recorded
            if result.path == AnswerPath.HUMAN:
                await store.change_status(cid, "request", reason="asked for a person")
                metrics.handoffs.labels("request").inc()
            elif result.handoff and result.handoff_reason not in FRUSTRATION_REASONS:
                # A frustrated visitor's offer is in the answer itself and on the record; the
                # handoff event stays for answers the bot could not give.
                await store.append_event(
                    cid,
                    {
                        "type": "handoff",
                        "message_id": answer_id,
                        "reason": result.handoff_reason or str(result.path),
                        "message": "A person can help.",
                    },
                )
            metrics.answers.labels(str(result.path)).inc()
            if result.generator_ttft_s is not None:
                metrics.generator_ttft.observe(result.generator_ttft_s)
            metrics.retrieval_seconds.observe(result.retrieval_s)
            if result.completion_tokens and result.total_s > 0:
                metrics.tokens_per_second.observe(result.completion_tokens / result.total_s)
            log.info("answer done", extra={"conversation_id": cid, "path": str(result.path), "total_s": round(result.total_s, 3)})
        except asyncio.CancelledError:
            # A visitor who closes the widget just after `done` cancels the steps after the
            # record (status, handoff event): the answer is stored already and must not be
            # stored a second time as "cancelled".
            if not recorded:
                await self._record_cancelled(answer_id, "".join(parts))
            raise
        except ValueError as exc:  # the assistant refused the message
            await self.error("invalid_message", str(exc))
        except RedisError as exc:
            log.warning("redis failed mid-answer: %s", exc, extra={"conversation_id": cid, "recorded": recorded})
            # A recorded answer has had its `done`; only a later step failed. So has one whose
            # `done` came through the event stream while the write's reply was lost.
            if not recorded and not self._done_sent:
                await self.error("unavailable", "the service is temporarily unavailable; the answer was interrupted")
        finally:
            keeper.cancel()
            try:
                await asyncio.shield(store.unlock_answer(cid, lock))
            except RedisError:
                self._unreleased_lock = lock

    async def _record_cancelled(self, answer_id: str, partial: str) -> None:
        assert self.conversation_id is not None
        cid = self.conversation_id
        with contextlib.suppress(RedisError):
            record = {"id": answer_id, "role": "assistant", "text": partial, "path": "cancelled", "created": time.time()}
            done = {"type": "done", "message_id": answer_id, "path": "cancelled"}
            await asyncio.shield(self.store.add_message(cid, record, [done]))
        self.service.metrics.answers.labels("cancelled").inc()

    async def _rate(self, frame: RateFrame) -> None:
        assert self.conversation_id is not None
        wait = await self.service.limiter.take(feedback_bucket(self.client, self.settings))
        if wait:
            await self.error("rate_limited", f"too much feedback; retry in {wait:.0f} s", retry_after_s=round(wait, 2))
            return
        try:
            submitted = await self.service.feedback.submit(
                self.conversation_id,
                frame.message_id,
                actor_role="user",
                actor_id=f"visitor:{self.conversation_id}",
                rating=frame.rating,
                comment=frame.comment,
                event_id=frame.event_id,
            )
        except FeedbackError as exc:
            await self.error(exc.code, str(exc), message_id=frame.message_id)
            return
        if not submitted.duplicate:
            self.service.metrics.feedback.labels(frame.rating).inc()
        await self.send(
            {
                "type": "rated",
                "message_id": frame.message_id,
                "rating": frame.rating,
                "event_id": submitted.event_id,
                "duplicate": submitted.duplicate,
            }
        )
        if frame.rating == "down" and not submitted.duplicate:
            await self._offer_person_after_thumbs_down(frame.message_id)

    async def _offer_person_after_thumbs_down(self, message_id: str) -> None:
        """A thumbs-down is a visitor the answer did not help: offer a person at once, under
        that answer, unless it offered one already (a not-sure answer) or a person is on it."""
        assert self.conversation_id is not None
        conversation = await self.store.get(self.conversation_id)
        if conversation.status != "bot":
            return
        answer = next((m for m in await self.store.messages(self.conversation_id) if m["id"] == message_id), None)
        if answer is None or answer.get("handoff"):
            return
        once = self.store.key(self.conversation_id, f"offered:{message_id}")  # a second thumbs-down: no second offer
        if not await self.store.redis.set(once, "1", nx=True, ex=self.settings.conversation_ttl_s):
            return
        await self.store.append_event(
            self.conversation_id,
            {
                "type": "handoff",
                "message_id": message_id,
                "reason": "rated_down",
                "message": "Sorry that did not help. A person can help.",
            },
        )

    # ---------------------------------------------------------------- the forwarder
    async def _on_event(self, frame: dict[str, Any] | None) -> None:
        """From the worker's event hub: a live frame, or None for "catch up from the stream"."""
        try:
            self._inbox.put_nowait(frame)
        except asyncio.QueueFull:
            log.warning("client too slow; closing", extra={"conversation_id": self.conversation_id})
            asyncio.get_running_loop().create_task(self.close(1013, "too far behind; reconnect and resume"))

    async def _forward(self) -> None:
        """Send every sequenced frame once, in order: live ones as they come, gaps from the stream."""
        assert self.conversation_id is not None
        while True:
            frame = await self._inbox.get()
            if frame is None or frame["seq"] > self._sent_seq + 1:
                await self._catch_up()
            if frame is not None and frame["seq"] == self._sent_seq + 1:
                self._sent_seq = frame["seq"]
                await self._send_event(self.store.open_frame(frame))

    async def _catch_up(self) -> None:
        assert self.conversation_id is not None
        try:
            missed = await self.store.events_after(self.conversation_id, self._sent_seq)
        except RedisError as exc:  # the hub sends another catch-up once Redis is back
            log.warning("catch-up read failed (%s)", type(exc).__name__, extra={"conversation_id": self.conversation_id})
            return
        for event in missed:
            if event["seq"] == self._sent_seq + 1:
                self._sent_seq = event["seq"]
                await self._send_event(event)

    async def _send_event(self, event: dict[str, Any]) -> None:
        # The answer's `done` is stored and published in one script, so the visitor can have it
        # (and reply) before the answer task resumes: it counts as sent from here too.
        if event.get("type") == "done" and event.get("message_id") == self._answering:
            self._done_sent = True
        await self.send(event)


def _public(message: dict[str, Any]) -> dict[str, Any]:
    """A stored message as the visitor's widget gets it: no passage texts, timings or token counts."""
    hidden = ("passages", "prompt_tokens", "completion_tokens", "timings", "prompt_version")
    return {k: v for k, v in message.items() if k not in hidden}
