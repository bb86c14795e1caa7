"""Answer mode auto on a real index: a model's recorded win over the composer holds until the
help center is ingested again, and then the composer answers until the model is evaluated anew."""

from __future__ import annotations

from pathlib import Path

from bot.answer_policy import write_record
from bot.assistant import AnswerMode
from knowledge_base.builder import KnowledgeBaseBuilder
from retrieval.embedder import SentenceEmbedder
from server.components import answer_mode, live_index_version, served_generator_model
from server.settings import Settings

WIN = {"key_facts_present": 0.9, "false_statements": 0, "trap_failures": 0, "out_of_scope_not_sure": 1.0}
COMPOSER = {"key_facts_present": 0.8, "false_statements": 0, "trap_failures": 0, "out_of_scope_not_sure": 1.0}


def test_a_recorded_win_lapses_when_the_knowledge_base_changes(
    writable_sample_index: Path, embedder: SentenceEmbedder, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", index_dir=writable_sample_index, answer_mode="auto")
    assert answer_mode(settings).mode is AnswerMode.EXTRACTIVE  # no record yet
    model = served_generator_model(settings)[1]
    write_record(settings.data_dir, model, "000001", WIN, COMPOSER)
    assert live_index_version(settings) == "000001"
    assert answer_mode(settings).mode is AnswerMode.GENERATIVE

    article = tmp_path / "engraving.md"
    article.write_text("# Engraving\n\nBrewlo engraves up to 20 characters on the lid for 9 EUR.\n")
    assert KnowledgeBaseBuilder(writable_sample_index, embedder).ingest([article]).version == "000002"
    decision = answer_mode(settings)
    assert decision.mode is AnswerMode.EXTRACTIVE
    assert "index version 000001" in decision.reason and "000002" in decision.reason

    write_record(settings.data_dir, model, "000002", WIN, COMPOSER)  # evaluated again on the new version
    assert answer_mode(settings).mode is AnswerMode.GENERATIVE


def test_an_unreadable_index_pointer_leaves_the_decision_to_the_record(tmp_path: Path) -> None:
    root = tmp_path / "index"
    root.mkdir()
    (root / "CURRENT").write_text("000009\n")  # names a version that is not there
    settings = Settings(data_dir=tmp_path / "data", index_dir=root, answer_mode="auto")
    assert live_index_version(settings) is None
    assert answer_mode(settings).mode is AnswerMode.EXTRACTIVE  # and no record: the composer
