from __future__ import annotations

from bot.grounding import GroundednessChecker, complete_sentences, split_sentences
from retrieval.embedder import SentenceEmbedder

PASSAGE = (
    "Club Monthly costs $4.99 per month and includes a filter pack every 3 months. "
    "Club Annual costs $49 per year, billed once a year. Card refunds take 5 to 10 business days."
)


def test_sentence_splitting_keeps_the_unfinished_rest() -> None:
    assert complete_sentences("One. Two! Thr") == (["One.", "Two!"], "Thr")
    assert complete_sentences("no end yet") == ([], "no end yet")
    assert split_sentences(" A b. C d? ") == ["A b.", "C d?"]
    # Not inside an initialism: the composer quoted "boxes because our carriers need a signature".
    assert split_sentences("We ship to all 50 states; we cannot ship to P.O. boxes because of it. Next.") == [
        "We ship to all 50 states; we cannot ship to P.O. boxes because of it.",
        "Next.",
    ]
    assert split_sentences("Use filtered water, e.g. from a jug. It is accurate to within 2 °C. Then pour.") == [
        "Use filtered water, e.g. from a jug.",
        "It is accurate to within 2 °C.",
        "Then pour.",
    ]


def test_supported_and_unsupported_sentences(embedder: SentenceEmbedder) -> None:
    checks = GroundednessChecker(embedder).check(
        [
            "Club Annual costs $49 per year [2].",
            "Card refunds take 5 to 10 business days.",
            "You can pay with Bitcoin at any Brewlo store.",
            "Club Monthly is $49 per month.",
        ],
        [PASSAGE],
    )
    assert [c.supported for c in checks] == [True, True, False, False], checks


def test_a_sentence_that_contradicts_its_evidence_is_not_supported(embedder: SentenceEmbedder) -> None:
    """Shared words are not agreement: polarity, yes/no, names, numbers and comparisons must match."""
    evidence = [
        "Never descale with bleach or put the kettle or its base in a dishwasher. "
        "We ship to the US, Canada, the UK and the EU. Club Annual costs $49 per year."
    ]
    checks = GroundednessChecker(embedder).check(
        [
            "The kettle can be placed in the dishwasher.",
            "We ship to Australia, the US and Canada.",
            "Yes, you can put the base in a dishwasher.",
            "Club Annual is cheaper than Club Monthly.",
            "Never put the kettle in a dishwasher.",
        ],
        evidence,
    )
    assert [(c.supported, c.contradiction) for c in checks][:2] == [(False, "polarity"), (False, "name: Australia")]
    assert not checks[2].supported and not checks[3].supported and checks[4].supported, checks


def test_an_faq_entrys_yes_backs_a_yes_only_to_its_own_question(embedder: SentenceEmbedder) -> None:
    """The entry's "Yes" answers "Can I use the app on a tablet?", not "will it run on iPadOS 15?"."""
    entry = "Q: Can I use the Brewlo app on a tablet?\nA: Yes, on iPads with iPadOS 16 or newer."
    checker = GroundednessChecker(embedder)
    other = checker.check(
        ["Yes, the app runs on iPads with iPadOS 16 or newer."], [entry], "will it run on my ipad with ipados 15?"
    )
    assert not other[0].supported and other[0].contradiction == "yes/no of another question", other
    same = checker.check(
        ["Yes, the app runs on iPads with iPadOS 16 or newer."], [entry], "Can I use the Brewlo app on a tablet?"
    )
    assert same[0].supported, same
    # Without the visitor's question nothing says the entry's yes is an answer to it.
    assert not checker.check(["Yes, on iPads with iPadOS 16 or newer."], [entry])[0].supported
    # A sentence without a yes or no is judged as before.
    assert checker.check(["The app runs on iPads with iPadOS 16 or newer."], [entry], "will it run on ipados 15?")[0].supported
