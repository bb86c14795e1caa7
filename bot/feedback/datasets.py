"""Training datasets from the feedback sink files (docs/datasets.md is the contract).

- `sft`: one record per good example: answers whose latest rating is up (the bot's text)
  and agents' corrections (the agent's text), as chat `messages` for TRL's SFT trainer.
- `preference`: one record per corrected answer: `prompt` / `chosen` (the correction) /
  `rejected` (the bot's answer), in TRL's conversational preference format.

Same sink files and options in, byte-identical output out: events are de-duplicated by
event id and ordered by stream id, records are sorted by id and written with sorted keys,
and nothing depends on the clock. Personal data is redacted unless `keep_pii`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bot.feedback.redaction import redact
from bot.feedback.sink import FILE_PREFIX
from bot.privacy.atomic_files import atomic_replace
from bot.privacy.crypto import Sealer, SealError
from bot.prompt import instructions, passage_block

Format = Literal["sft", "preference"]
SCHEMAS = {"sft": "supportbot.sft.v1", "preference": "supportbot.preference.v1"}
LABELS = {"sft": ("up", "correction"), "preference": ("correction", "down")}


class ExportError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ExportOptions:
    format: Format
    since: float | None = None  # the deciding event's time, inclusive (epoch seconds)
    until: float | None = None  # exclusive
    labels: tuple[str, ...] = ()  # sft: up, correction (default both); preference: down = only down-rated answers
    keep_pii: bool = False
    after: str | None = None  # watermark: only records decided by events with a later stream id


@dataclass(slots=True)
class Export:
    records: list[dict[str, Any]]
    manifest: dict[str, Any] = field(default_factory=dict)

    def jsonl(self) -> bytes:
        return "".join(_dumps(record) + "\n" for record in self.records).encode()


def stream_order(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    if not ms.isdigit() or not (seq or "0").isdigit():
        raise ExportError(f"not a stream id: {stream_id!r} (expected e.g. 1732350000000-0)")
    return int(ms), int(seq or 0)


def read_events(directory: Path, sealer: Sealer | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Every event in the sink files once, in stream order; plus a note per unreadable line.

    Sealed lines are opened with `sealer`; a key that is not configured raises SealError."""
    sealer = sealer or Sealer()
    seen: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for path in sorted(directory.glob(f"{FILE_PREFIX}*.jsonl")):
        with path.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    event = json.loads(line)
                    if "sealed" in event:
                        event = {**sealer.open(event["sealed"]), "stream_id": event["stream_id"]}
                    event_id, stream_id = event["event_id"], event["stream_id"]
                    stream_order(stream_id)
                except SealError:
                    raise  # a missing or wrong key is not a broken line: stop and say so
                except (ValueError, KeyError, TypeError, ExportError):
                    problems.append(f"{path.name}:{number}: not a feedback event, skipped")
                    continue
                seen.setdefault(event_id, event)
    events = sorted(seen.values(), key=lambda e: (stream_order(e["stream_id"]), e["event_id"]))
    return events, problems


def build(events: Iterable[dict[str, Any]], options: ExportOptions) -> Export:
    if options.format not in SCHEMAS:
        raise ExportError(f"unknown format {options.format!r}; expected sft or preference")
    allowed = LABELS[options.format]
    wrong = [label for label in options.labels if label not in allowed]
    if wrong:
        raise ExportError(f"label {wrong[0]!r} does not apply to {options.format}; use {' or '.join(allowed)}")
    after = stream_order(options.after) if options.after else None

    # The latest rating and the latest correction of every answer decide its records.
    rating: dict[tuple[str, str], dict[str, Any]] = {}
    correction: dict[tuple[str, str], dict[str, Any]] = {}
    watermark = options.after
    count = 0
    for event in events:
        count += 1
        key = (event["conversation_id"], event["message_id"])
        if event.get("correction") is not None:
            correction[key] = event
        elif event.get("rating") in ("up", "down"):
            rating[key] = event
        watermark = (
            event["stream_id"] if watermark is None or stream_order(event["stream_id"]) > stream_order(watermark) else watermark
        )

    records: list[dict[str, Any]] = []
    withdrawn: list[str] = []
    for key in sorted(set(rating) | set(correction)):
        rated, corrected = rating.get(key), correction.get(key)
        candidates: list[tuple[str, dict[str, Any]]] = []
        if options.format == "sft":
            wanted = options.labels or allowed
            if rated is not None and rated["rating"] == "up" and "up" in wanted:
                candidates.append(("up", rated))
            if corrected is not None and "correction" in wanted:
                candidates.append(("correction", corrected))
        elif corrected is not None and ("down" not in options.labels or (rated is not None and rated["rating"] == "down")):
            candidates.append(("correction", corrected))
        for label, decider in candidates:
            if not _in_window(decider, options, after):
                continue
            records.append(_record(options, label, decider, rated, corrected))
        down_since_watermark = (
            after is not None and rated is not None and rated["rating"] == "down" and stream_order(rated["stream_id"]) > after
        )
        if down_since_watermark and options.format == "sft":  # an earlier up-rating may have been exported
            withdrawn.append(_record_id(key, "up"))
    records.sort(key=lambda r: r["id"])
    export = Export(records)
    data = export.jsonl()
    export.manifest = {
        "schema": SCHEMAS[options.format],
        "format": options.format,
        "records": len(records),
        "events_read": count,
        "filters": {
            "since": options.since,
            "until": options.until,
            "labels": sorted(options.labels),
            "after": options.after,
            "pii": "kept" if options.keep_pii else "redacted",
        },
        "watermark": watermark,
        "withdrawn": sorted(set(withdrawn)),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return export


def write(export: Export, destination: Path) -> Path:
    """Write the records and `<destination>.manifest.json` atomically (temp file + rename)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    manifest = destination.with_name(destination.name + ".manifest.json")
    atomic_replace(destination, export.jsonl())
    atomic_replace(manifest, (json.dumps(export.manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest


def _in_window(event: dict[str, Any], options: ExportOptions, after: tuple[int, int] | None) -> bool:
    if options.since is not None and event["time"] < options.since:
        return False
    if options.until is not None and event["time"] >= options.until:
        return False
    return after is None or stream_order(event["stream_id"]) > after


def _record_id(key: tuple[str, str], label: str) -> str:
    return f"{key[0]}/{key[1]}/{label}"


def _record(
    options: ExportOptions,
    label: str,
    decider: dict[str, Any],
    rated: dict[str, Any] | None,
    corrected: dict[str, Any] | None,
) -> dict[str, Any]:
    context = decider["context"]
    clean = (lambda text: text) if options.keep_pii else redact
    passages = [
        {k: str(p.get(k) or "") for k in ("document_id", "title", "heading", "text")} for p in context.get("passages", [])
    ]
    blocks = [passage_block(i, p["title"], p["heading"], p["text"]) for i, p in enumerate(passages, 1)]
    system = instructions() + "\n\nPassages:\n\n" + ("\n\n".join(blocks) if blocks else "(none)")
    prompt = [{"role": "system", "content": system}]
    prompt += [{"role": turn["role"], "content": clean(turn["text"])} for turn in context.get("history", [])]
    prompt.append({"role": "user", "content": clean(context.get("question", ""))})
    answer = clean(context.get("answer", ""))
    key = (decider["conversation_id"], decider["message_id"])
    record: dict[str, Any] = {
        "schema": SCHEMAS[options.format],
        "id": _record_id(key, label),
        "label": label,
        "conversation_id": key[0],
        "message_id": key[1],
        "model_id": context.get("model_id", ""),
        "prompt_version": context.get("prompt_version", ""),
        "path": context.get("path", ""),
        "passages": passages,
        "event_id": decider["event_id"],
        "stream_id": decider["stream_id"],
        "time": decider["time"],
    }
    if options.format == "sft":
        text = answer if label == "up" else clean(decider["correction"])
        record["messages"] = [*prompt, {"role": "assistant", "content": text}]
    else:
        assert corrected is not None
        record["prompt"] = prompt
        record["chosen"] = [{"role": "assistant", "content": clean(corrected["correction"])}]
        record["rejected"] = [{"role": "assistant", "content": answer}]
        record["rejected_rating"] = rated["rating"] if rated is not None else None
    return record


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
