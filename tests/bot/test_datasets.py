"""Exports for retraining jobs, built from sink files that the real feedback pipeline wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bot.conversations import ConversationStore
from bot.feedback import datasets
from bot.feedback.log import FeedbackLog
from bot.feedback.redaction import redact
from bot.feedback.sink import FeedbackSink
from tests.bot.helpers import add_turn
from tests.bot.test_feedback import run_with_store


@pytest.fixture()
def sink_dir(redis_url: str, redis_prefix: str, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Four answers: up-rated, down-rated and corrected, rated up then down, corrected without rating."""

    async def work(store: ConversationStore, feedback: FeedbackLog) -> dict[str, str]:
        conversation = await store.create()
        cid = conversation.id
        ids = {
            "up": await add_turn(store, cid, "How do I descale my kettle? Mail me at jane@example.com", "Use vinegar [1]."),
            "down": await add_turn(store, cid, "Where is my order? Call +44 20 7946 0958", "Shipping takes a week [1]."),
            "flipped": await add_turn(store, cid, "Can I pay with card 4111 1111 1111 1111?", "Yes [1]."),
            "corrected": await add_turn(store, cid, "Do you ship to 221B Baker Street?", "No [1].", path="fallback"),
        }
        user = {"actor_role": "user", "actor_id": f"visitor:{cid}"}
        await feedback.submit(cid, ids["up"], rating="up", **user)  # type: ignore[arg-type]
        await feedback.submit(cid, ids["down"], rating="down", comment="wrong", **user)  # type: ignore[arg-type]
        await feedback.submit(cid, ids["down"], actor_role="agent", actor_id="alice", correction="It left on Monday.")
        await feedback.submit(cid, ids["flipped"], rating="up", **user)  # type: ignore[arg-type]
        await feedback.submit(cid, ids["flipped"], rating="down", **user)  # type: ignore[arg-type]
        await feedback.submit(cid, ids["corrected"], actor_role="agent", actor_id="bob", correction="Yes, we ship to London.")
        await FeedbackSink(store.redis, tmp_path, prefix=store.prefix).run_once()
        return ids

    return tmp_path, run_with_store(redis_url, redis_prefix, work)


def export(directory: Path, fmt: str, **options: Any) -> datasets.Export:
    events, problems = datasets.read_events(directory)
    assert not problems
    return datasets.build(events, datasets.ExportOptions(fmt, **options))  # type: ignore[arg-type]


def test_sft_holds_up_rated_answers_and_corrections_as_chat_messages(sink_dir: tuple[Path, dict[str, str]]) -> None:
    directory, ids = sink_dir
    result = export(directory, "sft")
    by_message = {(r["message_id"], r["label"]): r for r in result.records}
    assert set(by_message) == {(ids["up"], "up"), (ids["down"], "correction"), (ids["corrected"], "correction")}
    up = by_message[(ids["up"], "up")]
    assert [m["role"] for m in up["messages"]] == ["system", "user", "assistant"]
    assert up["messages"][-1]["content"] == "Use vinegar [1]."
    assert "<passage>Fill the kettle" in up["messages"][0]["content"]
    assert up["passages"][0]["document_id"] == "usage/descaling"
    assert up["schema"] == "supportbot.sft.v1" and up["prompt_version"] == "sb-prompt-2" and up["model_id"]
    assert by_message[(ids["down"], "correction")]["messages"][-1]["content"] == "It left on Monday."
    # the earlier turns come before the question
    corrected = by_message[(ids["corrected"], "correction")]
    assert [m["role"] for m in corrected["messages"]][1:] == ["user", "assistant"] * 4
    assert result.manifest["records"] == 3 and result.manifest["events_read"] == 6


def test_preference_pairs_corrections_against_the_bot_answer(sink_dir: tuple[Path, dict[str, str]]) -> None:
    directory, ids = sink_dir
    pairs = {r["message_id"]: r for r in export(directory, "preference").records}
    assert set(pairs) == {ids["down"], ids["corrected"]}
    pair = pairs[ids["down"]]
    assert pair["chosen"] == [{"role": "assistant", "content": "It left on Monday."}]
    assert pair["rejected"] == [{"role": "assistant", "content": "Shipping takes a week [1]."}]
    assert pair["prompt"][-1]["role"] == "user" and pair["rejected_rating"] == "down"
    only_down = export(directory, "preference", labels=("down",)).records
    assert [r["message_id"] for r in only_down] == [ids["down"]]


def test_pii_is_redacted_unless_kept(sink_dir: tuple[Path, dict[str, str]]) -> None:
    directory, _ = sink_dir
    redacted = export(directory, "sft").jsonl().decode()
    for secret in ("jane@example.com", "7946 0958", "4111 1111 1111 1111", "221B Baker Street"):
        assert secret not in redacted
    assert "[EMAIL]" in redacted and "[ADDRESS]" in redacted
    kept = export(directory, "sft", keep_pii=True).jsonl().decode()
    assert "jane@example.com" in kept and "221B Baker Street" in kept


def test_the_export_is_reproducible_and_incremental(sink_dir: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    directory, _ = sink_dir
    first, second = tmp_path / "a" / "sft.jsonl", tmp_path / "b" / "sft.jsonl"
    datasets.write(export(directory, "sft"), first)
    datasets.write(export(directory, "sft"), second)
    assert first.read_bytes() == second.read_bytes()
    manifest = json.loads(first.with_name("sft.jsonl.manifest.json").read_text())
    assert manifest["sha256"] and manifest["watermark"]
    # Nothing new since the watermark: an empty increment.
    assert export(directory, "sft", after=manifest["watermark"]).records == []
    # A time window before all the feedback: nothing.
    assert export(directory, "sft", until=1.0).records == []
    with pytest.raises(datasets.ExportError, match="does not apply"):
        export(directory, "sft", labels=("down",))
    with pytest.raises(datasets.ExportError, match="stream id"):
        export(directory, "sft", after="yesterday")


def test_broken_sink_lines_are_reported_not_fatal(sink_dir: tuple[Path, dict[str, str]]) -> None:
    directory, _ = sink_dir
    partition = next(directory.glob("feedback-*.jsonl"))
    with partition.open("a") as handle:
        handle.write("not json\n")
    events, problems = datasets.read_events(directory)
    assert len(events) == 6 and problems == [f"{partition.name}:7: not a feedback event, skipped"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe+x@example.co.uk", "write to [EMAIL]"),
        ("card 4111-1111-1111-1111 please", "card [CARD] please"),
        ("call +1 (415) 555-0132", "call [PHONE]"),
        ("I live at 12 Elm Street, apt 4", "I live at [ADDRESS]"),
        ("order 2026-11-02, tracking 1Z999AA10123456784", "order 2026-11-02, tracking 1Z999AA10123456784"),
        ("it costs 12.50 EUR", "it costs 12.50 EUR"),
    ],
)
def test_redaction(text: str, expected: str) -> None:
    assert redact(text) == expected
