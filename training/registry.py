"""The model registry: every training run is a versioned candidate in DATA_DIR/models/registry.

    registry/
      PROMOTED.json            {"current": id or null, "stack": [ids promoted, oldest first], "history": [...]}
      <candidate-id>/
        manifest.json          base model, data files and hashes, counts, exclusions, hyperparameters,
                               seed, library versions, loss history, evaluations, status, created
        train.jsonl            the examples it was trained on (prompt/completion)
        model/                 the merged checkpoint (safetensors, tokenizer, config, candidate.json), or with
                               `train --adapter` only candidate.json and the LoRA adapters (sft/, dpo/)
        checkpoints/           the trainer's checkpoints while it runs (`--resume` continues from the last)

Promotion and rollback replace PROMOTED.json atomically, so a reader (a server worker) sees the
old pointer or the new one, never half of one. The stack makes rollback return to what was
promoted before; rolling back the first promotion returns to the configured base model.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.generation.model_store import PROMOTED_FILE, has_model
from bot.privacy.atomic_files import atomic_replace

MANIFEST = "manifest.json"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
STATUSES = ("training", "ready", "failed")


class RegistryError(ValueError):
    """A registry operation that cannot be done; the message says why."""


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root

    def new_candidate_id(self) -> str:
        return f"cand-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"

    def directory(self, candidate_id: str) -> Path:
        if not candidate_id or "/" in candidate_id or candidate_id.startswith("."):
            raise RegistryError(f"not a candidate id: {candidate_id!r}")
        return self.root / candidate_id

    def manifest(self, candidate_id: str) -> dict[str, Any]:
        path = self.directory(candidate_id) / MANIFEST
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            known = ", ".join(m["candidate_id"] for m in self.candidates()[-5:]) or "none"
            raise RegistryError(f"no candidate {candidate_id!r} in {self.root} (latest: {known})") from None
        except ValueError as exc:
            raise RegistryError(f"{path}: unreadable manifest: {exc}") from None

    def write_manifest(self, candidate_id: str, manifest: dict[str, Any]) -> None:
        directory = self.directory(candidate_id)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_replace(directory / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True, default=str) + "\n").encode())

    def update_manifest(self, candidate_id: str, **fields: Any) -> dict[str, Any]:
        manifest = self.manifest(candidate_id)
        manifest.update(fields)
        self.write_manifest(candidate_id, manifest)
        return manifest

    def candidates(self) -> list[dict[str, Any]]:
        """Every candidate's manifest, oldest first."""
        found = []
        for path in sorted(self.root.glob(f"*/{MANIFEST}")) if self.root.is_dir() else []:
            try:
                found.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        return sorted(found, key=lambda m: (str(m.get("created", "")), str(m.get("candidate_id", ""))))

    def latest_unfinished(self) -> str | None:
        """The newest candidate that did not finish (`training`: killed; `failed`: stopped by an error or Ctrl+C)."""
        open_runs = [m for m in self.candidates() if m.get("status") in ("training", "failed")]
        return str(open_runs[-1]["candidate_id"]) if open_runs else None

    def pointer(self) -> dict[str, Any]:
        try:
            data = json.loads((self.root / PROMOTED_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"current": None, "stack": [], "history": []}
        except ValueError as exc:
            raise RegistryError(f"{self.root / PROMOTED_FILE}: unreadable: {exc}") from None
        return {"current": data.get("current"), "stack": list(data.get("stack", [])), "history": list(data.get("history", []))}

    def promoted(self) -> str | None:
        current = self.pointer()["current"]
        return str(current) if current else None

    def promote(self, candidate_id: str, *, by: str, forced: bool, reason: str) -> dict[str, Any]:
        """Make `candidate_id` the served model; returns the history entry."""
        manifest = self.manifest(candidate_id)
        if manifest.get("status") != "ready" or not has_model(self.directory(candidate_id) / MODEL_DIR):
            raise RegistryError(
                f"candidate {candidate_id} is {manifest.get('status')!r}, not a finished model; it cannot be promoted"
            )
        pointer = self.pointer()
        if pointer["current"] == candidate_id:
            raise RegistryError(f"{candidate_id} is already the promoted model")
        entry = {
            "action": "promote",
            "candidate_id": candidate_id,
            "previous": pointer["current"],
            "by": by,
            "forced": forced,
            "reason": reason,
            "time": time.time(),
        }
        self._write_pointer(candidate_id, [*pointer["stack"], candidate_id], [*pointer["history"], entry])
        return entry

    def rollback(self, *, by: str) -> dict[str, Any]:
        """Serve what was promoted before the current candidate (the base model after the first)."""
        pointer = self.pointer()
        if not pointer["current"]:
            raise RegistryError("nothing is promoted; the configured base model is already serving")
        stack = [c for c in pointer["stack"][:-1] if has_model(self.directory(c) / MODEL_DIR)]
        current = stack[-1] if stack else None
        entry = {
            "action": "rollback",
            "candidate_id": current,
            "previous": pointer["current"],
            "by": by,
            "forced": False,
            "reason": "",
            "time": time.time(),
        }
        self._write_pointer(current, stack, [*pointer["history"], entry])
        return entry

    def _write_pointer(self, current: str | None, stack: list[str], history: list[dict[str, Any]]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = {"current": current, "stack": stack, "history": history}
        atomic_replace(self.root / PROMOTED_FILE, (json.dumps(data, indent=1) + "\n").encode())
