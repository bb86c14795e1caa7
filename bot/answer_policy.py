"""Which answer mode runs: the composer, unless the generator has earned trust.

In `auto` the generator writes answers only when its model has a recorded evaluation on this
knowledge base (`supportbot bot eval --compare --record`) in which it beat the composer: more
key facts present, no more false statements, no trap failure, and out-of-scope questions
answered "not sure" at least as often. Without such a record the server never loads it.
The record holds for the index version it was measured on: once the knowledge base is
ingested again, its articles may say something else, so the composer answers until the
model is evaluated on the new version.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.assistant import AnswerMode

RECORDS_DIR = "evaluations"


@dataclass(frozen=True, slots=True)
class TrustDecision:
    mode: AnswerMode
    reason: str


def record_path(data_dir: Path, model: str) -> Path:
    """Where the evaluation record for `model` (a setting value: package, hub id or directory) lives."""
    return data_dir / RECORDS_DIR / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', model).strip('_')}.json"


def earned(generative: dict[str, Any], extractive: dict[str, Any]) -> tuple[bool, str]:
    """Whether generated answers beat the composer's on the same questions, and why not."""
    if generative["trap_failures"] > 0:
        return False, f"{generative['trap_failures']} contradiction traps failed"
    if generative["false_statements"] > extractive["false_statements"]:
        return False, f"{generative['false_statements']} false statements against the composer's {extractive['false_statements']}"
    if generative["out_of_scope_not_sure"] < extractive["out_of_scope_not_sure"]:
        return False, "answers out-of-scope questions the composer declines"
    if generative["key_facts_present"] <= extractive["key_facts_present"]:
        return False, (
            f"key facts present {generative['key_facts_present']:.3f}, not above the composer's {extractive['key_facts_present']:.3f}"
        )
    return True, "beats the composer"


def write_record(data_dir: Path, model: str, index_version: str, generative: dict[str, Any], extractive: dict[str, Any]) -> Path:
    ok, reason = earned(generative, extractive)
    path = record_path(data_dir, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "model": model,
        "index_version": index_version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "earned": ok,
        "reason": reason,
        "generative": generative,
        "extractive": extractive,
    }
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


def decide(setting: str, data_dir: Path, model: str, index_version: str | None = None) -> TrustDecision:
    """The mode a server runs for answer-mode `setting` (auto, extractive or generative), serving
    `index_version` of the knowledge base (None: not known, any record's version is taken)."""
    if setting != "auto":
        return TrustDecision(AnswerMode(setting), f"SUPPORTBOT_ANSWER_MODE={setting}")
    path = record_path(data_dir, model)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return TrustDecision(AnswerMode.EXTRACTIVE, f"no evaluation of {model} on this knowledge base ({path})")
    except (OSError, ValueError) as exc:
        return TrustDecision(AnswerMode.EXTRACTIVE, f"unreadable evaluation record {path}: {exc}")
    if record.get("earned") is True and record.get("model") == model:
        measured_on = record.get("index_version")
        if index_version is not None and measured_on != index_version:
            return TrustDecision(
                AnswerMode.EXTRACTIVE,
                f"{model} beat the composer on index version {measured_on}, but the knowledge base is at version "
                f"{index_version} now: evaluate it again (supportbot bot eval --mode generative --compare extractive --record)",
            )
        return TrustDecision(AnswerMode.GENERATIVE, f"{model} beat the composer on {record.get('created')}")
    return TrustDecision(
        AnswerMode.EXTRACTIVE, f"{model} has not beaten the composer: {record.get('reason', 'no reason recorded')}"
    )
