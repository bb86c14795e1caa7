"""The gate bench's fitting and cross-validation, on rows whose best gate is known."""

from __future__ import annotations

from bench.answer_gate import Row, cross_validate, fit, gate


def rows() -> list[Row]:
    """In-scope turns that score 1.2 and hold their key facts, out-of-scope turns at 1.0, and
    one out-of-scope turn at 1.3 that no cut-off can decline without losing every answer."""
    answered = [Row(True, 1.2, 0, 0, True, False, True) for _ in range(20)]
    declined = [Row(False, 1.0, 0, 0, False, False, True) for _ in range(19)]
    return answered + declined + [Row(False, 1.3, 0, 0, False, False, True)]


def test_the_fitted_gate_answers_the_most_key_facts_within_its_out_of_scope_share() -> None:
    cut, unknown, name = fit(rows(), max_out_share=0.05) or (None, None, None)
    assert cut is not None and 1.0 < cut <= 1.2
    assert gate(rows(), cut, unknown or 0.0, name or 0.0) == (20, 1, 0)
    # Nothing may be answered out of scope: only a cut-off above 1.3 is allowed, which answers no turn at all.
    strict = fit(rows(), max_out_share=0.0)
    assert strict is None or gate(rows(), *strict)[:2] == (0, 0)


def test_a_turn_that_may_not_be_sure_is_never_counted_as_answered() -> None:
    doubtful = [Row(True, 1.5, 9, 0, True, False, False)]
    assert gate(doubtful, 0.9, 0.0, 0.2) == (0, 0, 0)


def test_cross_validation_scores_each_half_with_the_gate_fitted_on_the_other() -> None:
    got, in_scope, answered_out, out = cross_validate(rows(), folds=3, max_out_share=0.1)
    assert (in_scope, out) == (3 * 20, 3 * 20)  # every turn is scored once per halving
    assert got == in_scope  # every half's fitted gate answers every in-scope turn
    assert answered_out == 3  # ... and the one out-of-scope turn above them, once per halving
