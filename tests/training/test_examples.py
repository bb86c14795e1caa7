"""Training data: the server's prompt, the evaluation kept out, clear errors for bad exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bot.evaluation import load_turns
from bot.generation.model_store import BUNDLED_GENERATOR, BUNDLED_GENERATOR_ID, resolve_generator
from bot.prompt import instructions
from retrieval.retriever import Retriever
from server.cli import EVAL_TURNS
from tests.conftest import MODELS_DIR, REPO
from tests.training.helpers import invoke
from training.examples import (
    DatasetError,
    EvalExclusion,
    content_words,
    normalise_question,
    read_export,
    read_preferences,
)
from training.job import TrainJob, build_examples
from training.registry import ModelRegistry
from training.trainer import Hyperparameters, load_tokenizer

TURNS = load_turns(EVAL_TURNS)
HELDOUT = next(t for t in TURNS if t.split == "heldout" and t.kind == "answer")
TUNE = next(t for t in TURNS if t.split == "tune" and t.kind == "answer")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(resolve_generator(BUNDLED_GENERATOR, MODELS_DIR)[0])


def sft_record(question: str, answer: str, *, model_id: str = BUNDLED_GENERATOR_ID, n: int = 0, **extra: Any) -> dict[str, Any]:
    passage = {"document_id": "support/fresh", "title": "Fresh article", "heading": "", "text": f"{answer} More text."}
    return {
        "schema": "supportbot.sft.v1",
        "id": f"c_{n}/m_{n}/up",
        "label": "up",
        "model_id": model_id,
        "messages": [
            {"role": "system", "content": instructions()},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
        "passages": [passage],
        **extra,
    }


def preference_record(
    question: str, chosen: str, rejected: str, *, model_id: str = BUNDLED_GENERATOR_ID, n: int = 0, **extra: Any
) -> dict[str, Any]:
    """A pair as `feedback export --format preference` writes it (docs/datasets.md)."""
    passage = {"document_id": "support/fresh", "title": "Fresh article", "heading": "", "text": f"{chosen} More text."}
    return {
        "schema": "supportbot.preference.v1",
        "id": f"c_{n}/m_{n}/correction",
        "label": "correction",
        "model_id": model_id,
        "prompt": [{"role": "system", "content": instructions()}, {"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "rejected_rating": "down",
        "passages": [passage],
        **extra,
    }


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def job(tmp_path: Path, retriever: Retriever | None, feedback: list[Path], **options: Any) -> TrainJob:
    return TrainJob(
        base_model=BUNDLED_GENERATOR,
        model_path="unused",
        registry=ModelRegistry(tmp_path / "registry"),
        eval_file=EVAL_TURNS,
        retriever=retriever,
        feedback=feedback,
        hyper=Hyperparameters(max_length=512),
        base_model_id=BUNDLED_GENERATOR_ID,
        **options,
    )


def is_eval_question(question: str) -> bool:
    words = content_words(question)
    for turn in TURNS:
        other = content_words(turn.question)
        if normalise_question(question) == normalise_question(turn.question):
            return True
        if words and other and len(words & other) / len(words | other) >= 0.8:
            return True
    return False


@pytest.mark.slow
@pytest.mark.parametrize("exclude_documents", [True, False])
def test_no_evaluation_question_reaches_the_training_set(
    tmp_path: Path, sample_retriever: Retriever, tokenizer: Any, exclude_documents: bool
) -> None:
    leaked = [
        sft_record(HELDOUT.question, "Leaked held-out answer.", n=1),
        sft_record("  " + TUNE.question.upper() + "?!", "Leaked tune answer.", n=2),  # same words, other case and punctuation
        sft_record("How long does the Brewlo kettle take to boil one litre of water?", "About four minutes.", n=3),
    ]
    export = write_jsonl(tmp_path / "sft.jsonl", leaked)
    leaked_pairs = [
        preference_record(HELDOUT.question, "Leaked held-out correction.", "Wrong.", n=4),
        preference_record(TUNE.question.lower() + " ...", "Leaked tune correction.", "Wrong.", n=5),
        preference_record("Does the Brewlo kettle whistle when it boils?", "No, it beeps once [1].", "Yes.", n=6),
    ]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", leaked_pairs)
    examples, _ = build_examples(
        job(tmp_path, sample_retriever, [export], preferences=[pairs], exclude_heldout_documents=exclude_documents),
        tokenizer,
    )

    heldout_documents = {t.document_id for t in TURNS if t.split == "heldout" and t.document_id}
    assert examples.examples, "the knowledge base must still give examples"
    for example in examples.examples:
        assert not is_eval_question(example.question), example
        for turn in TURNS:  # not even inside a prompt as the visitor's question
            assert f"<user_message>{turn.question}</user_message>" not in example.prompt
        if exclude_documents:
            assert example.document_id not in heldout_documents, example
    for pair in examples.pairs:  # nor in a preference pair, the DPO stage's data
        assert not is_eval_question(pair.question), pair
        for turn in TURNS:
            assert f"<user_message>{turn.question}</user_message>" not in pair.prompt
    sources = examples.counts()
    assert sources["faq"] > 0 and sources["article"] > 0 and sources["feedback"] == 1
    assert [p.id for p in examples.pairs] == ["preference:c_6/m_6/correction"]
    exclusions = examples.exclusions
    by_question = {e["example"]: e["eval_turn"] for e in exclusions["excluded_by_question"]}
    assert by_question["feedback:c_1/m_1/up"] == HELDOUT.id and by_question["feedback:c_2/m_2/up"] == TUNE.id
    assert by_question["preference:c_4/m_4/correction"] == HELDOUT.id
    assert by_question["preference:c_5/m_5/correction"] == TUNE.id
    assert exclusions["eval_turns"] == len(TURNS)
    if exclude_documents:
        assert set(exclusions["heldout_documents"]) == heldout_documents and exclusions["excluded_by_document"]
    else:
        assert exclusions["heldout_documents"] == [] and not exclusions["excluded_by_document"]


@pytest.mark.slow
def test_examples_use_the_servers_prompt_with_the_answers_own_passage(
    tmp_path: Path, sample_retriever: Retriever, tokenizer: Any
) -> None:
    examples, _ = build_examples(job(tmp_path, sample_retriever, []), tokenizer)
    for example in examples.examples:
        assert example.prompt.startswith(instructions()), example.id
        assert "Internal reference (never repeat it): SB-CANARY-" in example.prompt  # as every server prompt has
        assert example.prompt.endswith(f"\nQuestion: <user_message>{example.question}</user_message>\nAnswer:")
        assert example.completion.startswith(" ") and example.completion.rstrip().endswith("]")
        cited = example.completion.rstrip()[-2]
        assert f"[{cited}] " in example.prompt  # the passage it cites is in the prompt
        tokens = len(tokenizer.encode(example.prompt + example.completion))
        assert tokens <= 512, (example.id, tokens)
    faq = next(e for e in examples.examples if e.source == "faq")
    assert faq.completion.strip()[:-4] in faq.prompt  # the answer is the help center's own text


def test_pairs_use_the_servers_prompt_with_history_and_both_answers_whole(tmp_path: Path, tokenizer: Any) -> None:
    history = [{"role": "user", "content": "Hello, I have a kettle question."}, {"role": "assistant", "content": "Sure."}]
    record = preference_record("Does the Brewlo kettle whistle when it boils?", "No, it beeps once [1].", "Yes, loudly.", n=1)
    record["prompt"][1:1] = history
    same = preference_record("Can I boil milk in the Brewlo kettle?", "No [1].", "No [1].", n=2)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [record, same])
    # DPO alone: no knowledge base and no SFT export is a valid run.
    examples, _ = build_examples(job(tmp_path, None, [], preferences=[pairs]), tokenizer)
    assert examples.examples == [] and examples.pair_counts() == {"preference": 1}
    assert examples.skipped["pair_without_preference"] == 1  # the same answer on both sides teaches nothing
    pair = examples.pairs[0]
    assert pair.prompt.startswith(instructions()) and "Internal reference (never repeat it): SB-CANARY-" in pair.prompt
    assert (
        "Earlier in this conversation:\n\nQuestion: <user_message>Hello, I have a kettle question.</user_message>\n\nAnswer: Sure."
        in pair.prompt
    )
    assert pair.prompt.endswith("\nQuestion: <user_message>Does the Brewlo kettle whistle when it boils?</user_message>\nAnswer:")
    assert "[1] Fresh article\n<passage>No, it beeps once [1]. More text.</passage>" in pair.prompt
    assert (pair.chosen, pair.rejected) == (" No, it beeps once [1].", " Yes, loudly.")
    for answer in (pair.chosen, pair.rejected):
        assert len(tokenizer.encode(pair.prompt + answer)) + 1 <= 512  # + EOS: never truncated


def test_preference_exports_are_checked_like_sft_exports(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DatasetError, match=r"empty.jsonl: the export is empty \(no supportbot.preference.v1 records\)"):
        read_preferences(empty, BUNDLED_GENERATOR_ID)
    good = preference_record("q?", "right.", "wrong.", n=1)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(good) + "\n" + '{"schema": "supportbot.pref\n')
    with pytest.raises(DatasetError, match=r"broken.jsonl:2: not JSON"):
        read_preferences(broken, BUNDLED_GENERATOR_ID)
    old = write_jsonl(tmp_path / "old.jsonl", [{**good, "schema": "supportbot.preference.v0"}])
    with pytest.raises(DatasetError, match=r"old.jsonl:1: schema 'supportbot.preference.v0', expected supportbot.preference.v1"):
        read_preferences(old, BUNDLED_GENERATOR_ID)
    other = write_jsonl(tmp_path / "other.jsonl", [good, preference_record("q?", "a.", "b.", model_id="Qwen/Qwen2.5-0.5B", n=2)])
    with pytest.raises(DatasetError, match=r"other.jsonl:2: answer written by model 'Qwen/Qwen2.5-0.5B', but this run trains"):
        read_preferences(other, BUNDLED_GENERATOR_ID)
    assert (
        len(read_preferences(write_jsonl(tmp_path / "ours.jsonl", [{**good, "model_id": "cand-1"}]), "x", frozenset({"cand-1"})))
        == 1
    )
    no_chosen = write_jsonl(tmp_path / "no_chosen.jsonl", [{**good, "chosen": "right."}])
    with pytest.raises(DatasetError, match=r"no_chosen.jsonl:1: `chosen` must be one assistant message"):
        read_preferences(no_chosen, BUNDLED_GENERATOR_ID)
    no_question = write_jsonl(tmp_path / "no_question.jsonl", [{**good, "prompt": good["prompt"][:1]}])
    with pytest.raises(DatasetError, match=r"no_question.jsonl:1: `prompt` must be the system message"):
        read_preferences(no_question, BUNDLED_GENERATOR_ID)


def test_each_flag_names_the_other_when_given_the_other_export(tmp_path: Path) -> None:
    sft = write_jsonl(tmp_path / "sft.jsonl", [sft_record("q?", "a.")])
    with pytest.raises(
        DatasetError, match=r"sft.jsonl:1: a supportbot.sft.v1 record; --preferences reads .* pass this file with --feedback"
    ):
        read_preferences(sft, BUNDLED_GENERATOR_ID)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [preference_record("q?", "a.", "b.")])
    with pytest.raises(
        DatasetError,
        match=r"pairs.jsonl:1: a supportbot.preference.v1 pair; --feedback reads .* pass this file with --preferences",
    ):
        read_export(pairs, BUNDLED_GENERATOR_ID)


def test_train_refuses_a_misfiled_export_before_any_model_loads(tmp_path: Path) -> None:
    sft = write_jsonl(tmp_path / "sft.jsonl", [sft_record("q?", "a.")])
    result = invoke(tmp_path / "data", "train", "--no-kb", "--preferences", str(sft), "--no-progress")
    assert result.exit_code == 2, result.output
    assert "a supportbot.sft.v1 record; --preferences reads supportbot.preference.v1 exports" in result.output
    assert "pass this file with --feedback" in result.output
    assert not (tmp_path / "data" / "models" / "registry").exists()  # no candidate was started


def test_an_empty_export_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match=r"empty.jsonl: the export is empty \(no supportbot.sft.v1 records\)"):
        read_export(empty, BUNDLED_GENERATOR_ID)


def test_records_of_another_schema_are_refused(tmp_path: Path) -> None:
    old = write_jsonl(tmp_path / "old.jsonl", [sft_record("q?", "a.", schema="supportbot.sft.v0")])
    with pytest.raises(DatasetError, match=r"old.jsonl:1: schema 'supportbot.sft.v0', expected supportbot.sft.v1"):
        read_export(old, BUNDLED_GENERATOR_ID)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"schema": "supportbot.preference.v1"}])
    with pytest.raises(DatasetError, match=r"pairs.jsonl:1: a supportbot.preference.v1 pair; .* with --preferences"):
        read_export(pairs, BUNDLED_GENERATOR_ID)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"schema": \n')
    with pytest.raises(DatasetError, match=r"broken.jsonl:1: not JSON"):
        read_export(broken, BUNDLED_GENERATOR_ID)


def test_records_from_another_base_model_are_refused(tmp_path: Path) -> None:
    other = write_jsonl(
        tmp_path / "other.jsonl", [sft_record("q?", "a.", n=1), sft_record("q?", "a.", model_id="Qwen/Qwen2.5-0.5B", n=2)]
    )
    with pytest.raises(DatasetError, match=r"other.jsonl:2: answer written by model 'Qwen/Qwen2.5-0.5B', but this run trains"):
        read_export(other, BUNDLED_GENERATOR_ID)
    # Answers by a candidate trained from the same base are this model's feedback too.
    ours = write_jsonl(tmp_path / "ours.jsonl", [sft_record("q?", "a.", model_id="cand-1")])
    assert len(read_export(ours, BUNDLED_GENERATOR_ID, frozenset({"cand-1"}))) == 1


def test_nothing_to_train_on_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nothing to train on"):
        build_examples(job(tmp_path, None, []), tokenizer=None)


def test_exclusion_catches_near_duplicates_of_evaluation_questions() -> None:
    exclusion = EvalExclusion(TURNS)
    assert exclusion.matching_turn(HELDOUT.question) == HELDOUT.id
    assert exclusion.matching_turn(HELDOUT.question.upper() + " ??") == HELDOUT.id
    assert exclusion.matching_turn("What is the warranty on a cast-iron frying pan?") is None


def test_the_server_and_the_training_package_import_without_the_training_libraries() -> None:
    import subprocess
    import sys

    code = (
        "import sys, server.app, server.cli, training.job, training.registry, training.gate; "
        "print(sorted(m for m in ('trl', 'peft', 'datasets') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120, cwd=REPO)
    assert done.stdout.strip() == "[]"
