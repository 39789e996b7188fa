"""The sentences of ProntoQA (Saparov & He 2023) as Coconut uses it: vocabulary, rendering, parsing.

A fact links a subject to a predicate: a concept word ("tumpus") or a property ("happy"), possibly negated.
Facts about concepts carry a quantifier and read "Every tumpus is a gorpus.", "Each tumpus is not happy."
or "Tumpuses are gorpuses."; facts about the person read "Alex is a tumpus." and the query
"True or false: Alex is not happy.". Parsing re-renders what it read and demands the same text, so a
parsed sentence is exactly in the format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The vocabulary of the fictional ontology, read off the 9200 real records (train and valid).
CONCEPT_WORDS = [
    "brimpus", "dumpus", "gorpus", "grimpus", "impus", "jompus", "lempus", "lorpus", "numpus",
    "rompus", "shumpus", "sterpus", "tumpus", "vumpus", "wumpus", "yumpus", "zumpus",
]  # fmt: skip
PERSON_NAMES = ["Alex", "Fae", "Max", "Polly", "Rex", "Sally", "Sam", "Stella", "Wren"]
# Properties come in families of mutually exclusive values; a record never uses two values of one family
# except for the asked property and its decoy.
PROPERTY_FAMILIES = [
    ("blue", "brown", "orange", "red"),
    ("bright", "dull"),
    ("large", "small"),
    ("opaque", "transparent"),
    ("cold", "hot", "temperate"),
    ("fast", "moderate", "slow"),
    ("earthy", "floral", "fruity"),
    ("aggressive", "amenable", "angry", "kind", "mean"),
    ("bitter", "sour", "spicy", "sweet"),
    ("discordant", "loud", "melodic", "muffled"),
    ("feisty", "happy", "nervous", "shy"),
    ("liquid", "luminous", "metallic", "wooden"),
    ("overcast", "rainy", "snowy", "sunny", "windy"),
]
PROPERTIES = frozenset(value for family in PROPERTY_FAMILIES for value in family)

EVERY, EACH, PLURAL = "Every", "Each", "plural"
QUERY_PREFIX = "True or false: "

_QUANTIFIED = re.compile(r"(Every|Each) ([a-z]+) is (not )?(?:an? )?([a-z]+)\.")
_PLURAL = re.compile(r"([A-Z][a-z]+) are (not )?([a-z]+)\.")
_PERSON = re.compile(r"([A-Z][a-z]+) is (not )?(?:an? )?([a-z]+)\.")
_SENTENCE = re.compile(r"[^.]+\.")


@dataclass(frozen=True)
class Fact:
    """subject (a concept word, or a person's name when quantifier is '') -> predicate, maybe negated."""

    subject: str
    predicate: str
    negated: bool = False
    quantifier: str = ""  # EVERY, EACH, PLURAL, or "" for a fact about the person

    @property
    def about_property(self) -> bool:
        return self.predicate in PROPERTIES


def plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "z", "ch", "sh")) else "s")


def singular(word: str) -> str:
    """The concept word whose plural is `word`; ValueError when there is none."""
    for stem in (word[:-2], word[:-1]):
        if stem and plural(stem) == word:
            return stem
    raise ValueError(f"{word!r} is not a plural concept word")


def sentence(fact: Fact) -> str:
    """The text of a fact, e.g. 'Each tumpus is not happy.' or 'Tumpuses are gorpuses.'."""
    negation = "not " if fact.negated else ""
    if fact.quantifier == PLURAL:
        predicate = fact.predicate if fact.about_property else plural(fact.predicate)
        return f"{plural(fact.subject).capitalize()} are {negation}{predicate}."
    if fact.about_property:
        predicate = fact.predicate
    else:
        predicate = ("an " if fact.predicate[0] in "aeiou" else "a ") + fact.predicate
    subject = f"{fact.quantifier} {fact.subject}" if fact.quantifier else fact.subject
    return f"{subject} is {negation}{predicate}."


def parse_sentence(text: str) -> Fact:
    """The fact a sentence states; ValueError unless the sentence is exactly in the format."""
    if match := _QUANTIFIED.fullmatch(text):
        quantifier, subject, negation, predicate = match.groups()
    elif match := _PLURAL.fullmatch(text):
        quantifier, negation = PLURAL, match.group(2)
        subject, predicate = singular(match.group(1).lower()), match.group(3)
        predicate = predicate if predicate in PROPERTIES else singular(predicate)
    elif match := _PERSON.fullmatch(text):
        quantifier = ""
        subject, negation, predicate = match.groups()
    else:
        raise ValueError(f"not a ProntoQA sentence: {text!r}")
    fact = Fact(subject, predicate, negation is not None, quantifier)
    if sentence(fact) != text:
        raise ValueError(f"not a ProntoQA sentence: {text!r} (expected {sentence(fact)!r})")
    return fact


def split_sentences(text: str) -> list[str]:
    """'A. B.' -> ['A.', 'B.']; ValueError unless the sentences are joined by single spaces."""
    sentences = [s.strip() for s in _SENTENCE.findall(text)]
    if " ".join(sentences) != text:
        raise ValueError(f"not a run of sentences separated by single spaces: {text!r}")
    return sentences


def question_text(facts: list[Fact], query: Fact) -> str:
    return " ".join(sentence(f) for f in facts) + f" {QUERY_PREFIX}{sentence(query)}"


def parse_question(question: str) -> tuple[list[Fact], Fact]:
    """(the stated facts in order, the queried fact about the person)."""
    body, separator, asked = question.rpartition(" " + QUERY_PREFIX)
    if not separator:
        raise ValueError(f"question does not end with '{QUERY_PREFIX}<person> is <property>.'")
    query = parse_sentence(asked)
    if query.quantifier or not query.about_property:
        raise ValueError(f"the query {asked!r} must ask about a property of the person")
    return [parse_sentence(s) for s in split_sentences(body)], query
