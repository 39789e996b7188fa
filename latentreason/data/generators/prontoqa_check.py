"""Reading a ProntoQA record back from its text: is it sound (`check_prontoqa`), and what is in it (`profile`).

Both work on the text alone, so they apply to the real Coconut files as well as to generated records.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from latentreason.data.generators.prontoqa_text import (
    PLURAL,
    Fact,
    parse_question,
    parse_sentence,
    sentence,
    split_sentences,
)
from latentreason.data.problems import Problem


@dataclass
class Reading:
    """A checked record: its facts, the query, the person's stated classes and the proof's concepts."""

    facts: list[Fact]
    query: Fact
    classes: list[str]
    proof: list[str]


def _superclasses(facts: Iterable[Fact]) -> dict[str, list[str]]:
    graph: dict[str, list[str]] = {}
    for fact in facts:
        if fact.quantifier and not fact.about_property and not fact.negated:
            graph.setdefault(fact.subject, []).append(fact.predicate)
    return graph


def _reachable(graph: dict[str, list[str]], starts: Iterable[str]) -> set[str]:
    seen, stack = set(starts), list(starts)
    while stack:
        for parent in graph.get(stack.pop(), []):
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def _follow_proof(steps: list[str], person: str, classes: list[str], stated: set[Fact]) -> tuple[list[str], Fact]:
    """The concepts the proof walks through and the property rule it ends with; ValueError on a bad step."""
    if len(steps) < 2:
        raise ValueError(f"a proof needs at least one step and the conclusion, got {len(steps)} step(s)")
    proof: list[str] = []
    rule = None
    for number, step in enumerate(steps[:-1], 1):
        parts = split_sentences(step)
        if len(parts) != 2:
            raise ValueError(f"step {number} must be '<person> is a <concept>. <rule>.', got {step!r}")
        member = parse_sentence(parts[0])
        if member.quantifier or member.subject != person or member.negated or member.about_property:
            raise ValueError(f"step {number} must start with '{person} is a <concept>.', got {parts[0]!r}")
        if member.predicate not in (classes if rule is None else [rule.predicate]):
            raise ValueError(f"step {number}: {parts[0]!r} follows neither from the question nor from the step before")
        rule = parse_sentence(parts[1])
        if not rule.quantifier or rule not in stated:
            raise ValueError(f"step {number} uses {parts[1]!r}, which the question does not state")
        if rule.subject != member.predicate:
            raise ValueError(f"step {number}: {parts[1]!r} is not about a {member.predicate}")
        last = number == len(steps) - 1
        if rule.about_property != last or (rule.negated and not last):
            expected = "a property (the last step)" if last else "a class (not the last step)"
            raise ValueError(f"step {number}: {parts[1]!r} must give {expected}")
        proof.append(member.predicate)
    return proof, rule


def read_prontoqa(problem: Problem) -> Reading:
    """Parse and check a record (see `check_prontoqa`)."""
    facts, query = parse_question(problem.question)
    person = query.subject
    about_person = [f for f in facts if not f.quantifier]
    if not about_person or any(f.subject != person or f.negated or f.about_property for f in about_person):
        raise ValueError(f"the question must state classes of {person} only as '{person} is a <concept>.'")
    classes = [f.predicate for f in about_person]
    proof, rule = _follow_proof(problem.steps, person, classes, set(facts))
    conclusion = Fact(person, rule.predicate, rule.negated)
    if problem.steps[-1] != sentence(conclusion):
        raise ValueError(f"the last step must be the conclusion {sentence(conclusion)!r}, got {problem.steps[-1]!r}")
    if query.predicate != conclusion.predicate:
        raise ValueError(f"the question asks about {query.predicate!r}; the proof concludes {sentence(conclusion)!r}")
    # The answer must follow from all the facts, not only from the proof: no other route may contradict it.
    reachable = _reachable(_superclasses(facts), classes)
    verdicts = {f.negated for f in facts if f.quantifier and f.subject in reachable and f.predicate == query.predicate}
    if verdicts != {conclusion.negated}:
        raise ValueError(f"the facts give {person} both {query.predicate!r} and its negation")
    expected = "True" if query.negated == conclusion.negated else "False"
    if problem.answer != expected:
        raise ValueError(f"answer {problem.answer!r}, but the proof makes {sentence(query)!r} {expected}")
    return Reading(facts, query, classes, proof)


def check_prontoqa(problem: Problem) -> None:
    """Raise ValueError unless the record is a sound ProntoQA problem.

    Every sentence is in the format; each proof step names a class of the person that the question or
    the previous step gives and applies a rule the question states; the conclusion is the last rule's
    property, which is the asked one; the answer is True exactly when the query has the conclusion's
    polarity; and the facts give the person no contradicting value for the asked property.
    """
    read_prontoqa(problem)


def profile(problem: Problem) -> dict[str, int]:
    """Counts that describe a record's ontology and distractors (all real 5-hop records agree on most).

    off_proof: concepts that apply to the person but are not on the proof (side branches, the second class);
    unreachable: concepts that do not apply to the person; decoys: facts about the asked property
    other than the proof's rule; bare: concepts with no property.
    """
    reading = read_prontoqa(problem)
    facts = reading.facts
    rules = [f for f in facts if f.quantifier]
    concepts = {f.subject for f in rules} | {f.predicate for f in rules if not f.about_property}
    reachable = _reachable(_superclasses(facts), reading.classes)
    return {
        "facts": len(facts),
        "concepts": len(concepts),
        "class_facts": sum(not f.about_property for f in rules),
        "property_facts": sum(f.about_property for f in rules),
        "negated_properties": sum(f.negated for f in rules),
        "plural_facts": sum(f.quantifier == PLURAL for f in rules),
        "person_classes": len(reading.classes),
        "proof_concepts": len(reading.proof),
        "off_proof": len(reachable - set(reading.proof)),
        "unreachable": len(concepts - reachable),
        "decoys": sum(f.predicate == reading.query.predicate for f in rules) - 1,
        "bare": len(concepts - {f.subject for f in rules if f.about_property}),
        "query_negated": int(reading.query.negated),
        "true": int(problem.answer == "True"),
    }


def mean_profile(problems: Iterable[Problem]) -> dict[str, float]:
    """The mean of each `profile` count over the problems."""
    rows = [profile(p) for p in problems]
    if not rows:
        raise ValueError("cannot profile an empty problem list")
    return {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]}
