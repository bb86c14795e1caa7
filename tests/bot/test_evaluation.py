"""The labelled turns and the scoring that sees a wrong answer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.answer_policy import decide, earned, write_record
from bot.assistant import AnswerMode, AnswerPath, Source, TurnResult
from bot.evaluation import (
    BotEvalReport,
    has_key_facts,
    load_turns,
    normalise,
    score_turn,
    unsupported_sentences,
)
from retrieval.retriever import Retriever
from server.cli import EVAL_TURNS, VISITORS_HELDOUT

ARTICLE = "Never descale with bleach or put the kettle or its base in a dishwasher. The body can be wiped with a damp cloth."


def test_the_labelled_set_has_traps_out_of_scope_and_two_disjoint_splits() -> None:
    turns = load_turns(EVAL_TURNS)
    kinds = {k: [t for t in turns if t.kind == k] for k in ("answer", "trap", "out_of_scope")}
    assert len(kinds["trap"]) >= 40 and len(kinds["out_of_scope"]) >= 30 and len(kinds["answer"]) >= 60
    for kind in kinds.values():
        assert {t.split for t in kind} == {"tune", "heldout"}
    tune = {t.question.lower() for t in turns if t.split == "tune"}
    assert not tune & {t.question.lower() for t in turns if t.split == "heldout"}
    assert all(t.key_facts for t in turns if t.in_scope)


def test_key_facts_and_false_claims_are_scored_on_the_answer() -> None:
    assert has_key_facts("The link **expires after 1 hour**.", [["1 hour", "one hour"]])
    assert not has_key_facts("The link expires soon.", [["1 hour", "one hour"]])
    turn = next(t for t in load_turns(EVAL_TURNS) if t.kind == "trap" and t.false_claims)
    bad = TurnResult(turn.question, turn.question, answer="Yes, of course.", path=AnswerPath.GENERATED)
    scored = score_turn(turn, bad, {})
    assert scored.false_statement and not scored.correct and any(w.startswith("false claim") for w in scored.why_false)


def test_a_yes_after_a_quotes_framing_is_a_false_claim() -> None:
    """The false-claim patterns anchored at the start ("^yes") see each quoted line, not only the
    answer's first words, which are the framing ('From our article "...": ')."""
    turn = next(t for t in load_turns(EVAL_TURNS) if t.id == "t053")  # "will the app run on my old ipad with ipados 15?"
    faq = "Q: Can I use the Brewlo app on a tablet?\nA: Yes, on iPads with iPadOS 16 or newer."
    evidence = {"faq#tablet": faq}

    def composed(answer: str, quoted: str) -> TurnResult:
        result = TurnResult(turn.question, turn.question, answer=answer, path=AnswerPath.COMPOSED, quoted=quoted)
        result.sources = [Source("Tablets", None, "faq#tablet", faq, 1.0)]
        return result

    quote = "Yes, on iPads with iPadOS 16 or newer."
    assert score_turn(turn, composed(f'From our article "Tablets": {quote}', quote), evidence).false_statement
    second = f'From our article "Apps": The app runs on phones.\n\nAnd from "Tablets": {quote}'
    assert score_turn(turn, composed(second, quote), evidence).false_statement
    fact = "On iPads with iPadOS 16 or newer."
    assert not score_turn(turn, composed(f'From our article "Tablets": {fact}', fact), evidence).false_statement
    # The title a quote is framed with is no claim: an FAQ's own question names what it answers.
    titled = f'From our article "What if iPadOS 15 is all my iPad has?": {fact}'
    assert not score_turn(turn, composed(titled, fact), evidence).false_statement


def test_a_claim_the_evidence_does_not_carry_is_false_even_when_its_words_are_there() -> None:
    claims = ["Put the kettle in a dishwasher.", "The body can be wiped with a damp cloth.", "We ship to Australia."]
    assert unsupported_sentences(claims, ARTICLE) == ["Put the kettle in a dishwasher.", "We ship to Australia."]
    source = Source("Descaling", None, "usage/descaling", ARTICLE[:50], 1.0)
    quoted = TurnResult("q", "q", answer='From our article "Descaling": ' + ARTICLE, path=AnswerPath.COMPOSED, quoted=ARTICLE)
    quoted.sources = [source]
    turn = next(t for t in load_turns(EVAL_TURNS) if t.in_scope)
    assert not score_turn(turn, quoted, {"usage/descaling": ARTICLE}).false_statement


def test_a_not_sure_that_quotes_a_passage_is_checked_like_an_answer() -> None:
    turn = next(t for t in load_turns(EVAL_TURNS) if t.kind == "trap" and t.false_claims)
    source = Source("Descaling", None, "usage/descaling", ARTICLE[:50], 1.0)
    wrong = TurnResult(turn.question, turn.question, answer="Not sure. Put the kettle in a dishwasher.", path=AnswerPath.NOT_SURE)
    wrong.quoted, wrong.sources = "Put the kettle in a dishwasher.", [source]
    scored = score_turn(turn, wrong, {"usage/descaling": ARTICLE})
    assert scored.not_sure and scored.suggested and scored.false_statement
    plain = TurnResult(turn.question, turn.question, answer="I'm not sure.", path=AnswerPath.NOT_SURE)
    assert not score_turn(turn, plain, {}).suggested
    # Two quotes, the first ending in a list item without a full stop, are two claims, not one.
    listed = TurnResult(turn.question, turn.question, answer="Not sure. ...", path=AnswerPath.NOT_SURE)
    listed.quoted = "- Wipe the body of the kettle with a damp cloth and a soft towel\nNever descale with bleach."
    listed.sources = [source]
    evidence = {"usage/descaling": ARTICLE + "\n- Wipe the body of the kettle with a damp cloth and a soft towel"}
    assert not score_turn(turn, listed, evidence).false_statement
    # The sure-answers share leaves a suggestion's key facts out; the overall share counts them.
    fact = next(t for t in load_turns(EVAL_TURNS) if t.in_scope and t.kind == "answer")
    text = " ".join(alternatives[0] for alternatives in fact.key_facts)
    hedged = TurnResult(fact.question, fact.question, answer=f"Not sure. {text}", path=AnswerPath.NOT_SURE, quoted=text)
    report = BotEvalReport("extractive", [score_turn(fact, hedged, {})])
    summary = report.summary()
    assert summary["key_facts_present"] == 1.0 and summary["key_facts_sure"] == 0.0
    assert summary["key_facts_first"] == 1.0
    # What the visitor reads first: facts only in a second article's quote are not in it.
    second = TurnResult(
        fact.question, fact.question, answer=f'From our article "A": Hello.\n\nAnd from "B": {text}', path=AnswerPath.COMPOSED
    )
    late = score_turn(fact, second, {})
    assert late.key_facts and not late.key_facts_first
    assert summary["in_scope_suggested"] == 1.0 and summary["suggestions"] == 1 and summary["answers"] == 0


def test_a_broken_labelled_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "turns.jsonl"
    path.write_text('{"question": "ok", "document_id": null}\n{"question": "x", "kind": "riddle"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: not a labelled turn")):
        load_turns(path)


SUMMARY = {"key_facts_present": 0.6, "false_statements": 0, "trap_failures": 0, "out_of_scope_not_sure": 0.8}


def test_auto_generates_only_after_a_recorded_win_over_the_composer(tmp_path: Path) -> None:
    assert decide("auto", tmp_path, "gemma").mode is AnswerMode.EXTRACTIVE
    assert decide("generative", tmp_path, "gemma").mode is AnswerMode.GENERATIVE
    worse = {**SUMMARY, "trap_failures": 2, "key_facts_present": 0.9}
    assert earned(worse, SUMMARY) == (False, "2 contradiction traps failed")
    write_record(tmp_path, "gemma", "000001", worse, SUMMARY)
    refused = decide("auto", tmp_path, "gemma")
    assert refused.mode is AnswerMode.EXTRACTIVE and "traps failed" in refused.reason
    write_record(tmp_path, "gemma", "000001", {**SUMMARY, "key_facts_present": 0.7}, SUMMARY)
    assert decide("auto", tmp_path, "gemma").mode is AnswerMode.GENERATIVE
    assert decide("auto", tmp_path, "another-model").mode is AnswerMode.EXTRACTIVE


def test_a_win_counts_only_for_the_knowledge_base_version_it_was_measured_on(tmp_path: Path) -> None:
    write_record(tmp_path, "gemma", "000001", {**SUMMARY, "key_facts_present": 0.7}, SUMMARY)
    assert decide("auto", tmp_path, "gemma", "000001").mode is AnswerMode.GENERATIVE
    stale = decide("auto", tmp_path, "gemma", "000002")  # the help center was ingested again since
    assert stale.mode is AnswerMode.EXTRACTIVE
    assert "index version 000001" in stale.reason and "version 000002 now" in stale.reason and "--record" in stale.reason
    assert decide("generative", tmp_path, "gemma", "000002").mode is AnswerMode.GENERATIVE  # an explicit mode is obeyed


def test_the_visitor_held_out_set_is_labelled_against_the_help_center(sample_retriever: Retriever) -> None:
    """Written from the help center's text by people who never saw turns.jsonl, in visitors'
    words; every key fact is in its article and no false-claim pattern says the article's answer."""
    visitors = load_turns(VISITORS_HELDOUT)
    assert {t.split for t in visitors} == {"heldout"}
    assert {t.kind for t in visitors} == {"answer", "trap", "out_of_scope"}
    assert len(visitors) >= 80 and len({t.id for t in visitors}) == len(visitors)
    tune = {normalise(t.question) for t in load_turns(EVAL_TURNS) if t.split == "tune"}
    assert not tune & {normalise(t.question) for t in visitors}
    chunks = sample_retriever.snapshot.chunks
    articles: dict[str, str] = {}
    for chunk in chunks:
        articles[chunk.document_id] = articles.get(chunk.document_id, "") + f" {chunk.title} {chunk.heading} {chunk.text}"
    for turn in visitors:
        if not turn.in_scope:
            assert turn.document_id is None and not turn.key_facts and not turn.false_claims, turn.id
            continue
        assert turn.document_id in articles, turn.id
        assert has_key_facts(articles[turn.document_id], turn.key_facts), (turn.id, turn.key_facts)
        for pattern in turn.false_claims:
            assert not re.search(pattern, turn.reference, re.IGNORECASE | re.MULTILINE), (turn.id, pattern)
        assert turn.kind != "trap" or turn.false_claims, turn.id
