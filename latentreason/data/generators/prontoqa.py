"""ProntoQA-style true-or-false questions over a fictional ontology, in Coconut's 5-hop format.

    "Every tumpus is a gorpus. Gorpuses are not happy. ... Alex is a tumpus. Alex is a jompus.
     True or false: Alex is happy."  steps: "Alex is a tumpus. Every tumpus is a gorpus.", ...,
    "Alex is a gorpus. Gorpuses are not happy.", "Alex is not happy."  answer: "False"

Construction (our own; the layout is what every one of the 9200 real records shows): a proof chain of
`hops` concepts, each a subclass of the next, the last carrying the asked property. Each chain concept
also has a side superclass with a property of its own, and the last one a second, bare superclass. The
person belongs to a second, rival class with a property and a bare superclass, and one isolated
concept states the asked property with the opposite polarity (a decoy that does not apply to the
person). Every concept with a property takes a value from its own property family; the decoy shares
the asked one. The facts are shuffled, the person's two classes follow in random order, and the
query asks for the conclusion or its negation with equal chance.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from latentreason.data.generators.prontoqa_check import check_prontoqa
from latentreason.data.generators.prontoqa_text import (
    CONCEPT_WORDS,
    EACH,
    EVERY,
    PERSON_NAMES,
    PLURAL,
    PROPERTIES,
    PROPERTY_FAMILIES,
    Fact,
    plural,
    question_text,
    sentence,
)
from latentreason.data.problems import Problem
from latentreason.errors import ConfigError

NAME = "prontoqa"
# Each chain concept has a side concept with a property and the rival class has one: 2*hops+1 families.
MAX_HOPS = (len(PROPERTY_FAMILIES) - 1) // 2

# Rates read off the 9200 real records (train and valid).
QUANTIFIER_WEIGHTS = {PLURAL: 0.5, EVERY: 0.25, EACH: 0.25}  # independent per fact (real 0.50/0.25/0.25)
NEGATED_CHAIN_PROPERTY = 0.27  # chain concepts before the last (real 0.274)
NEGATED_CONCLUSION = 0.47  # the proof's property rule (real 0.467)
NEGATED_OTHER_PROPERTY = 1 / 3  # side concepts and the rival class (real 0.330)
NEGATED_QUERY = 0.5  # real 0.499, so about half the answers are True (real 0.492)


def _word_errors(words: Sequence[str], names: Sequence[str], max_hops: int) -> list[str]:
    errors = []
    distinct = len({plural(w) for w in words})
    if distinct != len(words) or distinct < 2 * max_hops + 4:
        errors.append(
            f"concept_words: need {2 * max_hops + 4} words with distinct plurals for {max_hops} hops, got "
            f"{len(words)} words with {distinct} distinct plurals"
        )
    if any(not (w.isalpha() and w.islower()) or {w, plural(w)} & PROPERTIES for w in words):
        errors.append("concept_words: each must be lower-case letters and neither it nor its plural a property")
    if not names or any(not (n.isalpha() and n.istitle()) or n in (EVERY, EACH) for n in names):
        errors.append("person_names: need capitalised names of letters only, other than 'Every' and 'Each'")
    return errors


def _fact(rng: random.Random, subject: str, predicate: str, negated: bool = False) -> Fact:
    quantifier = rng.choices(list(QUANTIFIER_WEIGHTS), weights=list(QUANTIFIER_WEIGHTS.values()))[0]
    return Fact(subject, predicate, negated, quantifier)


def _draw(rng: random.Random, hops: int, words: Sequence[str], names: Sequence[str]) -> tuple[str, list[str], str]:
    """(question, steps, answer) of one problem whose proof applies `hops` rules."""
    concepts = rng.sample(list(words), 2 * hops + 4)
    chain, sides = concepts[:hops], concepts[hops : 2 * hops]
    last_bare, rival, rival_parent, decoy = concepts[2 * hops :]
    values = [rng.choice(family) for family in rng.sample(PROPERTY_FAMILIES, 2 * hops + 1)]
    links = [_fact(rng, a, b) for a, b in zip(chain, chain[1:])]
    chain_rates = [NEGATED_CHAIN_PROPERTY] * (hops - 1) + [NEGATED_CONCLUSION]
    chain_values = [_fact(rng, c, v, rng.random() < r) for c, v, r in zip(chain, values, chain_rates)]
    conclusion = chain_values[-1]
    others = [
        _fact(rng, concept, value, rng.random() < NEGATED_OTHER_PROPERTY)
        for concept, value in zip(sides + [rival], values[hops:])
    ]
    branches = [_fact(rng, c, s) for c, s in zip(chain, sides)] + [_fact(rng, chain[-1], last_bare)]
    distractors = [_fact(rng, rival, rival_parent), _fact(rng, decoy, conclusion.predicate, not conclusion.negated)]
    facts = links + chain_values + others + branches + distractors
    rng.shuffle(facts)
    person = rng.choice(list(names))
    classes = [Fact(person, chain[0]), Fact(person, rival)]
    rng.shuffle(classes)
    query = Fact(person, conclusion.predicate, rng.random() < NEGATED_QUERY)
    rules = links + [conclusion]
    steps = [f"{sentence(Fact(person, c))} {sentence(rule)}" for c, rule in zip(chain, rules)]
    steps.append(sentence(Fact(person, conclusion.predicate, conclusion.negated)))
    answer = "True" if query.negated == conclusion.negated else "False"
    return question_text(facts + classes, query), steps, answer


def generate_prontoqa(
    n: int,
    seed: int = 0,
    min_hops: int = 5,
    max_hops: int = 5,
    concept_words: Sequence[str] | None = None,
    person_names: Sequence[str] | None = None,
) -> list[Problem]:
    """`n` ProntoQA problems; the defaults are Coconut's configuration (5 hops, the real vocabulary).

    min_hops / max_hops: rules in the proof (class links plus the final property rule), drawn uniformly.
    concept_words / person_names: the vocabularies (default: the real files' 17 "-pus" words and 9 names).
    """
    words = list(CONCEPT_WORDS if concept_words is None else concept_words)
    names = list(PERSON_NAMES if person_names is None else person_names)
    if not (isinstance(min_hops, int) and isinstance(max_hops, int) and 1 <= min_hops <= max_hops <= MAX_HOPS):
        raise ConfigError(
            f"{NAME}: need integers 1 <= min_hops <= max_hops <= {MAX_HOPS}, got min_hops={min_hops!r}, "
            f"max_hops={max_hops!r}"
        )
    errors = _word_errors(words, names, max_hops)
    if errors:
        raise ConfigError(f"{NAME}: " + "; ".join(errors))
    params = {"min_hops": min_hops, "max_hops": max_hops, "num_concept_words": len(words), "num_names": len(names)}
    rng = random.Random(seed)
    problems = []
    for index in range(n):
        hops = rng.randint(min_hops, max_hops)
        question, steps, answer = _draw(rng, hops, words, names)
        meta = {"generator": NAME, "params": params, "seed": seed, "index": index, "hops": hops}
        problem = Problem(question, steps, answer, meta)
        check_prontoqa(problem)
        problems.append(problem)
    return problems
