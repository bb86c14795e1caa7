"""Builds the bot's components from settings: one place, used by the CLI and the app."""

from __future__ import annotations

from bot.answer_policy import TrustDecision, decide
from bot.assistant import AnswerMode, Assistant
from bot.composer import AnswerComposer
from bot.generation.generator import Generator, TransformersGenerator
from bot.generation.model_store import read_promoted, resolve_generator
from bot.generation.remote import OpenAICompatibleGenerator
from bot.grounding import GroundednessChecker
from retrieval.embedder import SentenceEmbedder
from retrieval.index_files import IndexFormatError, current_version_dir, read_manifest
from retrieval.retriever import Retriever
from server.settings import Settings


def build_generator(settings: Settings) -> Generator:
    """The configured backend; the in-process one still needs `warm_up()`."""
    if settings.generator_backend == "openai":
        assert settings.generator_base_url is not None  # checked by Settings
        tokenizer = settings.generator_tokenizer or resolve_generator(settings.generator_model, settings.models_dir)[0]
        api_key = settings.generator_api_key.get_secret_value() if settings.generator_api_key else None
        return OpenAICompatibleGenerator(
            settings.generator_base_url,
            settings.generator_model,
            tokenizer,
            api_key=api_key,
            context_window=settings.generator_context_tokens,
        )
    return TransformersGenerator(
        served_generator_model(settings)[0],
        settings.models_dir,
        device=settings.generator_device,
        context_window=settings.generator_context_tokens,
        engine=settings.generator_engine,
        slots=settings.generator_slots,
        max_batch_tokens=settings.generator_max_batch_tokens,
        kv_cache_blocks=settings.generator_kv_cache_blocks,
    )


def served_generator_model(settings: Settings) -> tuple[str, str]:
    """(the generator model to load, the name its evaluation record is filed under).

    The registry's promoted candidate when one was trained from the configured model (and the
    in-process backend runs it); otherwise the configured model itself."""
    if settings.generator_backend == "transformers" and settings.generator_use_promoted:
        promoted = read_promoted(settings.registry_dir)
        if promoted is not None and promoted.base_model == settings.generator_model:
            return str(promoted.model_dir), promoted.candidate_id
    return settings.generator_model, settings.generator_model


def build_assistant(
    settings: Settings,
    retriever: Retriever,
    embedder: SentenceEmbedder,
    generator: Generator | None,
    *,
    mode: AnswerMode = AnswerMode.EXTRACTIVE,
    max_new_tokens: int | None = None,
    first_text_deadline: bool = True,
) -> Assistant:
    """An assistant in `mode`; `generator` may be None in extractive mode (nothing is loaded).

    An evaluation turns `first_text_deadline` off: it measures what the model writes, which
    a deadline made for this machine's speed would replace with the composer's answer."""
    generative = mode is AnswerMode.GENERATIVE
    return Assistant(
        retriever,
        AnswerComposer(embedder, ignore_words=settings.company_name),
        generator=generator if generative else None,
        checker=GroundednessChecker(embedder) if generative else None,
        mode=mode,
        company=settings.company_name,
        fix_typos=settings.answer_fix_typos,
        confidence_threshold=settings.answer_confidence_threshold,
        relevance_threshold=settings.answer_relevance_threshold,
        suggestion_threshold=settings.answer_suggestion_threshold,
        max_unknown_words=settings.answer_max_unknown_words,
        unknown_word_penalty=settings.answer_unknown_word_penalty,
        max_name_words=settings.answer_max_name_words,
        name_word_penalty=settings.answer_name_word_penalty,
        top_k=settings.answer_top_k,
        max_new_tokens=max_new_tokens or settings.generator_max_new_tokens,
        timeout_s=settings.generator_timeout_s,
        max_message_chars=settings.answer_max_message_chars,
        max_concurrent_generations=generation_admission(settings, generator) if generator is not None else None,
        first_text_deadline_s=settings.answer_first_text_deadline_s if first_text_deadline else None,
    )


def answer_mode(settings: Settings) -> TrustDecision:
    """The mode this server answers in, and why (`auto` asks the evaluation record, which holds
    only for the knowledge base's live index version)."""
    return decide(settings.answer_mode, settings.data_dir, served_generator_model(settings)[1], live_index_version(settings))


def live_index_version(settings: Settings) -> str | None:
    """The version the index root's CURRENT names; None when there is none or it cannot be read
    (the retriever reports that itself, with the path)."""
    try:
        version_dir = current_version_dir(settings.index_root)
        return read_manifest(version_dir).version if version_dir is not None else None
    except IndexFormatError:
        return None


def generation_admission(settings: Settings, generator: Generator) -> int:
    """How many answers one worker generates at once. On a CPU, 8 concurrent streams give
    3.2x the single-stream throughput at 4 tokens/s each (docs/benchmarks.md); 64 give 1.6
    tokens/s each, so a 256-token answer outlives the 60 s timeout. GPUs batch far more."""
    if settings.generator_max_concurrent is not None:
        return settings.generator_max_concurrent
    on_cpu = isinstance(generator, TransformersGenerator) and not generator.device.startswith("cuda")
    return 8 if on_cpu else 256
