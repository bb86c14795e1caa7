"""`supportbot train` and `supportbot models list|show|evaluate|promote|rollback` (docs/training.md).

Thin: the data, training, registry and gate live in training/; this module builds what they
need from settings (the retriever, the generator, assistants for the evaluation), prints, and
records promotions and rollbacks in the audit trail. Nothing heavy loads until a command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from server.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from bot.evaluation import LabelledTurn
    from training.registry import ModelRegistry

models_app = typer.Typer(
    help="Trained candidates: list, show, evaluate against the gate, promote, roll back.", no_args_is_help=True
)
SUMMARY_ROWS = (
    ("key facts present (in scope)", "key_facts_present", "{:.3f}"),
    ("false statements", "false_statements", "{}"),
    ("contradiction traps failed", "trap_failures", "{}"),
    ("out of scope: not sure", "out_of_scope_not_sure", "{:.3f}"),
    ("in scope: not sure", "in_scope_not_sure", "{:.3f}"),
    ("time to first text p50 (s)", "ttft_p50_s", "{}"),
)


def _registry(settings: Settings) -> ModelRegistry:
    from training.registry import ModelRegistry

    return ModelRegistry(settings.registry_dir)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def train_command(
    ctx: typer.Context,
    from_kb: Annotated[
        bool, typer.Option("--from-kb/--no-kb", help="Grounded examples from the live index's FAQ and articles.")
    ] = True,
    feedback: Annotated[
        list[Path] | None, typer.Option(help="A `feedback export --format sft` file (repeatable).", exists=True, dir_okay=False)
    ] = None,
    preferences: Annotated[
        list[Path] | None,
        typer.Option(
            help="A `feedback export --format preference` file (repeatable): a DPO stage after SFT.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    max_steps: Annotated[int, typer.Option(min=0, help="Optimizer steps (0: --epochs decides).")] = 0,
    epochs: Annotated[float, typer.Option(min=0.01, help="Passes over the data when --max-steps is 0.")] = 3.0,
    learning_rate: Annotated[float, typer.Option(min=1e-7, help="AdamW learning rate for the LoRA weights.")] = 2e-4,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per device per step.")] = 4,
    gradient_accumulation: Annotated[int, typer.Option(min=1, help="Steps accumulated per optimizer step.")] = 1,
    warmup_ratio: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="Share of each stage's steps spent warming the learning rate up from 0.")
    ] = 0.05,
    lora_rank: Annotated[int, typer.Option(min=1, help="LoRA rank (all linear layers).")] = 16,
    lora_alpha: Annotated[int, typer.Option(min=1, help="LoRA alpha.")] = 32,
    max_length: Annotated[
        int, typer.Option(min=64, help="Tokens per example; prompts keep the passages that fit, as the server does.")
    ] = 1024,
    limit: Annotated[int, typer.Option(min=0, help="Train on at most N examples (a seeded sample; 0: all).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed for sampling, initialisation and data order.")] = 42,
    save_steps: Annotated[int, typer.Option(min=1, help="Checkpoint every N steps (what --resume continues from).")] = 50,
    dpo_beta: Annotated[
        float, typer.Option(min=1e-4, help="DPO beta: how far the pairs may pull from the SFT model (higher: less far).")
    ] = 0.1,
    dpo_max_steps: Annotated[int, typer.Option(min=0, help="DPO optimizer steps (0: --dpo-epochs decides).")] = 0,
    dpo_epochs: Annotated[float, typer.Option(min=0.01, help="DPO passes over the pairs when --dpo-max-steps is 0.")] = 1.0,
    dpo_learning_rate: Annotated[float, typer.Option(min=1e-8, help="DPO learning rate for its LoRA weights.")] = 5e-5,
    adapter: Annotated[
        bool,
        typer.Option(
            "--adapter/--merged",
            help="Keep only the LoRA adapters (MBs, one per stage; served on the unchanged base model) instead of a merged "
            "full checkpoint.",
        ),
    ] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue the newest unfinished run from its last checkpoint, with its options.")
    ] = False,
    exclude_heldout_documents: Annotated[
        bool,
        typer.Option(
            "--exclude-heldout-documents/--keep-heldout-documents",
            help="Leave out every document a held-out evaluation question is about (evaluation questions are always left out).",
        ),
    ] = True,
    eval_questions: Annotated[
        Path | None, typer.Option(help="Labelled turns to keep out of training (default: the sample help center's).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show the trainer's progress bar.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the candidate's manifest as JSON.")] = False,
) -> None:
    """Fine-tune the generator (TRL SFT, then DPO on preference pairs; LoRA, merged or kept) and register it as a candidate."""
    from bot.generation.model_store import ModelUnavailable, resolve_generator
    from server.cli import EVAL_TURNS
    from training.examples import DatasetError
    from training.job import TrainJob, run
    from training.trainer import Hyperparameters

    settings: Settings = ctx.obj
    try:
        hyper = Hyperparameters(
            max_steps=max_steps,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            gradient_accumulation=gradient_accumulation,
            warmup_ratio=warmup_ratio,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            max_length=max_length,
            seed=seed,
            save_steps=save_steps,
            dpo_beta=dpo_beta,
            dpo_max_steps=dpo_max_steps,
            dpo_epochs=dpo_epochs,
            dpo_learning_rate=dpo_learning_rate,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    retriever = None
    if from_kb and not resume:
        from knowledge_base.components import build_retriever
        from retrieval.index_files import IndexFormatError

        retriever = build_retriever(settings)
        try:
            retriever.snapshot  # noqa: B018 - loads the index now, so a missing one is reported before the model loads
        except IndexFormatError as exc:
            raise _fail(str(exc)) from None
    try:  # after the index check: the bundled model is dequantized on first use (a minute)
        model_path, model_id = resolve_generator(settings.generator_model, settings.models_dir)
    except ModelUnavailable as exc:
        raise _fail(str(exc)) from None
    registry = _registry(settings)
    job = TrainJob(
        base_model=settings.generator_model,
        model_path=model_path,
        registry=registry,
        eval_file=eval_questions or EVAL_TURNS,
        retriever=retriever,
        feedback=list(feedback or []),
        preferences=list(preferences or []),
        company=settings.company_name,
        top_k=settings.answer_top_k,
        hyper=hyper,
        limit=limit,
        exclude_heldout_documents=exclude_heldout_documents,
        resume=resume,
        progress=progress,
        adapter=adapter,
        base_model_id=model_id,
        accepted_models=frozenset(
            str(m["candidate_id"]) for m in registry.candidates() if m.get("base_model") == settings.generator_model
        ),
    )
    try:
        manifest = run(job)
    except (DatasetError, ModelUnavailable, ValueError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(manifest, indent=1, sort_keys=True))
        return
    training = manifest.get("training", {})
    losses = manifest.get("loss_history", [])
    first, last = (losses[0]["loss"], losses[-1]["loss"]) if losses else (None, None)
    typer.echo(
        f"candidate {manifest['candidate_id']}: {manifest['examples']} examples, {training.get('steps')} steps in "
        f"{training.get('wall_s')} s ({training.get('tokens_per_s')} tokens/s on {training.get('device')}), loss {first} -> {last}"
    )
    dpo = manifest.get("dpo") or {}
    if dpo:
        history = dpo.get("loss_history", [])
        typer.echo(
            f"DPO: {manifest['pairs']['total']} pairs, {dpo.get('steps')} steps in {dpo.get('wall_s')} s, loss "
            f"{history[0]['loss'] if history else None} -> {history[-1]['loss'] if history else None}, "
            f"reward accuracy {dpo.get('final_reward_accuracy')}"
        )
    kept = "LoRA adapters" if manifest.get("model_format") == "adapter" else "merged model"
    typer.echo(f"{kept}: {manifest.get('model_bytes', 0) / 1e6:.1f} MB")
    typer.echo(f"next: supportbot models evaluate {manifest['candidate_id']}")


@models_app.command("list")
def models_list(
    ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="One JSON object per candidate.")] = False
) -> None:
    """Every candidate, oldest first; * marks the promoted one."""
    settings: Settings = ctx.obj
    registry = _registry(settings)
    promoted = registry.promoted()
    rows = []
    for m in registry.candidates():
        evaluation = m.get("evaluations", {}).get("latest") or {}
        rows.append(
            {
                "candidate_id": m["candidate_id"],
                "promoted": m["candidate_id"] == promoted,
                "status": m.get("status"),
                "created": m.get("created"),
                "base_model": m.get("base_model"),
                "model_format": m.get("model_format", "merged"),
                "examples": m.get("examples", {}).get("total"),
                "steps": m.get("training", {}).get("steps"),
                "final_loss": (m.get("loss_history") or [{}])[-1].get("loss"),
                "key_facts_present": evaluation.get("candidate", {}).get("key_facts_present"),
                "gate": evaluation.get("gate", {}).get("passed"),
            }
        )
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, sort_keys=True))
        return
    if not rows:
        typer.echo(f"no candidates in {registry.root}; train one with `supportbot train`")
        return
    typer.echo(f"  {'candidate':28}{'status':10}{'created':27}{'examples':>9}{'steps':>7}{'loss':>8}{'facts':>7}  gate")
    for r in rows:
        loss = f"{r['final_loss']:.3f}" if r["final_loss"] is not None else "-"
        facts = f"{r['key_facts_present']:.3f}" if r["key_facts_present"] is not None else "-"
        gate = {True: "passed", False: "refused", None: "not evaluated"}[r["gate"]]
        typer.echo(
            f"{'*' if r['promoted'] else ' '} {r['candidate_id']:28}{r['status']!s:10}{r['created']!s:27}"
            f"{r['examples']!s:>9}{r['steps']!s:>7}{loss:>8}{facts:>7}  {gate}"
        )
    if promoted is None:
        typer.echo(f"nothing promoted: the configured {settings.generator_model} serves")


@models_app.command("show")
def models_show(ctx: typer.Context, candidate: Annotated[str, typer.Argument(help="A candidate id from `models list`.")]) -> None:
    """A candidate's whole manifest (data, exclusions, hyperparameters, losses, evaluations) as JSON."""
    from training.registry import RegistryError

    try:
        manifest = _registry(ctx.obj).manifest(candidate)
    except RegistryError as exc:
        raise _fail(str(exc), 1) from None
    typer.echo(json.dumps(manifest, indent=1, sort_keys=True))


def evaluate_systems(
    settings: Settings, labelled: list[LabelledTurn], systems: list[tuple[str, str | None]], max_new_tokens: int, concurrency: int
) -> tuple[dict[str, dict[str, Any]], str]:
    """Each (name, generator model or None for the composer) on the same questions; summaries and the index version."""
    import asyncio

    from bot.assistant import AnswerMode, Assistant
    from bot.evaluation import BotEvalReport, evaluate_turns, evidence_by_document
    from bot.generation.generator import Generator, TransformersGenerator
    from bot.generation.remote import OpenAICompatibleGenerator
    from knowledge_base.components import build_embedder, build_retriever
    from server.components import build_assistant, build_generator

    embedder = build_embedder(settings)
    retriever = build_retriever(settings, embedder)
    evidence = evidence_by_document(retriever.snapshot.chunks)
    summaries: dict[str, dict[str, Any]] = {}

    async def evaluate(assistant: Assistant, generator: Generator | None) -> BotEvalReport:
        try:
            return await evaluate_turns(assistant, labelled, evidence, concurrency)
        finally:
            if isinstance(generator, OpenAICompatibleGenerator):
                await generator.aclose()

    for name, model in systems:
        mode = AnswerMode.EXTRACTIVE if model is None else AnswerMode.GENERATIVE
        update: dict[str, Any] = {"generator_model": model, "generator_use_promoted": False}
        if model is not None and Path(model).is_dir():
            update["generator_backend"] = "transformers"  # a candidate runs in-process; a remote current model stays remote
        own = settings if model is None else settings.model_copy(update=update)
        generator = build_generator(own) if model is not None else None
        try:
            if isinstance(generator, TransformersGenerator):
                generator.warm_up()
            assistant = build_assistant(
                own, retriever, embedder, generator, mode=mode, max_new_tokens=max_new_tokens, first_text_deadline=False
            )
            assistant.warm_up()
            report = asyncio.run(evaluate(assistant, generator))
        finally:
            if isinstance(generator, TransformersGenerator):
                generator.close()
        summaries[name] = {"model": generator.model_id if generator is not None else "composer", **report.summary()}
    return summaries, retriever.snapshot.version


@models_app.command("evaluate")
def models_evaluate(
    ctx: typer.Context,
    candidate: Annotated[str, typer.Argument(help="A candidate id from `models list`.")],
    questions: Annotated[Path | None, typer.Option(help="Labelled turns (default: the sample help center's).")] = None,
    split: Annotated[str, typer.Option(help="heldout (what the gate reads), tune or all.")] = "heldout",
    limit: Annotated[int, typer.Option(min=0, help="Only the first N questions of the split (0: all).")] = 0,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=1024, help="Answer length budget.")] = 64,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Questions in flight at once.")] = 8,
) -> None:
    """The held-out evaluation of the candidate, the current model and the composer in one run; stored in the manifest."""
    from datetime import UTC, datetime

    from bot.evaluation import load_turns
    from server.cli import EVAL_TURNS
    from server.components import served_generator_model
    from training.gate import decide
    from training.registry import MODEL_DIR, RegistryError

    settings: Settings = ctx.obj
    registry = _registry(settings)
    try:
        manifest = registry.manifest(candidate)
    except RegistryError as exc:
        raise _fail(str(exc), 1) from None
    if manifest.get("status") != "ready":
        raise _fail(f"candidate {candidate} is {manifest.get('status')!r}; only a finished run can be evaluated", 1)
    if split not in ("tune", "heldout", "all"):
        raise _fail(f"--split must be tune, heldout or all, not {split!r}")
    source = questions or EVAL_TURNS
    try:
        labelled = [t for t in load_turns(source) if split == "all" or t.split == split]
    except ValueError as exc:
        raise _fail(str(exc)) from None
    labelled = labelled[:limit] if limit else labelled
    if not labelled:
        raise _fail(f"no labelled turns in the {split} split of {source}")
    current_model, current_name = served_generator_model(settings)
    systems = [
        ("candidate", str(registry.directory(candidate) / MODEL_DIR)),
        ("current", current_model),
        ("composer", None),
    ]
    summaries, index_version = evaluate_systems(settings, labelled, systems, max_new_tokens, concurrency)
    decision = decide(summaries["candidate"], summaries["current"], summaries["composer"], settings.gate_key_facts_margin)
    evaluation = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "questions_file": str(source),
        "split": split,
        "limit": limit,
        "questions": [t.id for t in labelled],
        "index_version": index_version,
        "max_new_tokens": max_new_tokens,
        "current_model": current_name,
        **summaries,
        "gate": {"passed": decision.passed, "reasons": decision.reasons, "margin": settings.gate_key_facts_margin},
    }
    evaluations = dict(manifest.get("evaluations") or {})
    evaluations["latest"] = evaluation
    evaluations.setdefault("history", []).append(evaluation)
    registry.update_manifest(candidate, evaluations=evaluations)
    names = ("candidate", "current", "composer")
    typer.echo(
        f"{len(labelled)} questions ({split} split of {source.name}), index {index_version}; current model: {current_name}"
    )
    typer.echo(f"{'':32}" + "".join(f"{n:>14}" for n in names))
    for label, key, fmt in SUMMARY_ROWS:
        typer.echo(f"{label:32}" + "".join(f"{fmt.format(summaries[n][key]):>14}" for n in names))
    typer.echo(f"gate: {decision.explain()}")


def _audit(settings: Settings, action: str, target: str, details: dict[str, Any], work: Any) -> Any:
    """Run `work()` and record it in the audit trail, or do neither when Redis cannot be reached."""
    from bot.privacy.audit import AuditLog
    from server.cli import _with_redis

    async def audited(redis: Redis) -> Any:
        await redis.ping()
        done = work()
        await AuditLog(redis, settings.redis_prefix, retention_s=settings.audit_retention_days * 86400).record(
            str(details.pop("by")), "admin", action, target, "cli", {**details, **done}
        )
        return done

    return _with_redis(settings, audited)


def _default_actor() -> str:
    from server.cli import _cli_actor

    return _cli_actor()


@models_app.command("promote")
def models_promote(
    ctx: typer.Context,
    candidate: Annotated[str, typer.Argument(help="A candidate id that `models evaluate` has run on.")],
    force: Annotated[bool, typer.Option(help="Promote even though the gate refuses (recorded in the audit trail).")] = False,
    by: Annotated[str | None, typer.Option(help="Who promotes (default: cli:OS user).")] = None,
) -> None:
    """Serve the candidate if it passed the gate; workers load it on their next start."""
    from bot.answer_policy import write_record
    from server.components import answer_mode, served_generator_model
    from training.gate import GateDecision, decide
    from training.registry import RegistryError

    settings: Settings = ctx.obj
    registry = _registry(settings)
    try:
        manifest = registry.manifest(candidate)
        evaluation = (manifest.get("evaluations") or {}).get("latest")
        current = served_generator_model(settings)[1]
        if evaluation is None:
            decision = GateDecision(False, [f"not evaluated: run `supportbot models evaluate {candidate}` first"])
        elif evaluation.get("current_model") != current:
            decision = GateDecision(
                False, [f"evaluated against {evaluation.get('current_model')}, but {current} serves now; evaluate again"]
            )
        else:
            decision = decide(
                evaluation["candidate"], evaluation["current"], evaluation["composer"], settings.gate_key_facts_margin
            )
    except RegistryError as exc:
        raise _fail(str(exc), 1) from None
    if not decision.passed and not force:
        typer.echo(f"refused: {candidate} {decision.explain()} (--force promotes anyway, audited)", err=True)
        raise typer.Exit(1)

    def promote() -> dict[str, Any]:
        entry = registry.promote(candidate, by=actor, forced=not decision.passed, reason=decision.explain())
        if evaluation is not None:  # answer mode auto generates with it only if it beat the composer
            write_record(
                settings.data_dir, candidate, evaluation["index_version"], evaluation["candidate"], evaluation["composer"]
            )
        return {"previous": entry["previous"], "forced": entry["forced"], "gate": decision.explain()}

    actor = by or _default_actor()
    try:
        done = _audit(settings, "model.promote", candidate, {"by": actor}, promote)
    except RegistryError as exc:
        raise _fail(str(exc), 1) from None
    forced = " (forced past the gate)" if done["forced"] else ""
    typer.echo(f"promoted {candidate}{forced}, replacing {done['previous'] or settings.generator_model}; by {actor}")
    typer.echo(f"answer mode {settings.answer_mode}: {answer_mode(settings).reason}; restart workers to load it")


@models_app.command("rollback")
def models_rollback(
    ctx: typer.Context, by: Annotated[str | None, typer.Option(help="Who rolls back (default: cli:OS user).")] = None
) -> None:
    """Serve what was promoted before the current candidate (the configured base model after the first)."""
    from server.components import answer_mode
    from training.registry import RegistryError

    settings: Settings = ctx.obj
    registry = _registry(settings)
    actor = by or _default_actor()

    def rollback() -> dict[str, Any]:
        entry = registry.rollback(by=actor)
        return {"restored": entry["candidate_id"], "previous": entry["previous"]}

    try:
        done = _audit(settings, "model.rollback", str(registry.promoted() or ""), {"by": actor}, rollback)
    except RegistryError as exc:
        raise _fail(str(exc), 1) from None
    typer.echo(f"rolled back {done['previous']}; now serving {done['restored'] or settings.generator_model}; by {actor}")
    typer.echo(f"answer mode {settings.answer_mode}: {answer_mode(settings).reason}; restart workers to load it")
