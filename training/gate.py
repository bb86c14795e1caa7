"""The gate: may a candidate replace the current model? Decided on one run's evaluation results.

A candidate is promoted only when, on the same held-out questions in the same run, it
- beats the current model (the promoted candidate, or the configured base model when none is)
  by at least `margin` on key facts present, and
- makes no more false statements and fails no more contradiction traps than the composer, and
- wrote at least one answer itself (a candidate whose every answer fell back to the composer
  would otherwise inherit the composer's figures).

Whether answer mode `auto` then lets it generate is bot/answer_policy's stricter `earned`
(no trap failure at all, more key facts than the composer), written at promotion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # why not, one line each; empty when passed

    def explain(self) -> str:
        return "passes the gate" if self.passed else "; ".join(self.reasons)


def decide(candidate: dict[str, Any], current: dict[str, Any] | None, composer: dict[str, Any], margin: float) -> GateDecision:
    """Compare evaluation summaries (bot.evaluation.BotEvalReport.summary) of one run."""
    reasons: list[str] = []
    compared = [s for s in (current, composer) if s is not None]
    if any(s["questions"] != candidate["questions"] for s in compared):
        reasons.append("the evaluations ran on different questions; run `supportbot models evaluate` again")
    if current is not None and candidate["key_facts_present"] < current["key_facts_present"] + margin:
        reasons.append(
            f"key facts present {candidate['key_facts_present']:.3f}, not {margin:.3f} above the current model's "
            f"{current['key_facts_present']:.3f}"
        )
    paths = candidate.get("paths")
    if paths is not None and not paths.get("generated"):
        # Every answer fell back to the composer: the figures are the composer's, not the model's.
        reasons.append("none of its answers was its own (every one fell back to the composer)")
    if candidate["false_statements"] > composer["false_statements"]:
        reasons.append(f"{candidate['false_statements']} false statements against the composer's {composer['false_statements']}")
    if candidate["trap_failures"] > composer["trap_failures"]:
        reasons.append(
            f"{candidate['trap_failures']} contradiction traps failed against the composer's {composer['trap_failures']}"
        )
    return GateDecision(not reasons, reasons)
