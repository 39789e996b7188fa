"""ProntoQA generator: the checker against the real Coconut files, broken records, statistics, parameters."""

from __future__ import annotations

import pytest

from latentreason.data.formats import load_coconut
from latentreason.data.generators import generate
from latentreason.data.generators.compare import compare_stats, comparison_table
from latentreason.data.generators.prontoqa_check import check_prontoqa, mean_profile, profile
from latentreason.data.generators.prontoqa_text import (
    EACH,
    EVERY,
    PLURAL,
    Fact,
    parse_question,
    parse_sentence,
    sentence,
)
from latentreason.data.problems import Problem
from latentreason.data.sources import load_problems
from latentreason.errors import ConfigError

# Tolerances of generated (1000, seed 0) vs the real validation file (200 records).
WORDS_REL = 0.02  # question and CoT words: real 104.8 and 43.6
PLURAL_FACTS_REL = 0.05  # real 11.3 of 23 rules in bare plural form
NEGATED_PROPERTIES_ABS = 0.25  # real 4.06 of 12; its standard error over 200 records is about 0.1
TRUE_SHARE_ABS = 0.08  # real 0.445 over 200 records (0.492 over the 9000 of train), standard error 0.035


def structure(hops: int) -> dict[str, int]:
    """The counts every record with a `hops`-rule proof has (all 9200 real 5-hop records agree)."""
    return {
        "facts": 4 * hops + 5,
        "concepts": 2 * hops + 4,
        "class_facts": 2 * hops + 1,
        "property_facts": 2 * hops + 2,
        "person_classes": 2,
        "proof_concepts": hops,
        "off_proof": hops + 3,  # side superclasses, the last concept's bare one, the rival class and its parent
        "unreachable": 1,  # the decoy
        "decoys": 1,
        "bare": 2,
    }


@pytest.fixture(scope="module")
def real_valid(shared_file):
    return load_coconut(shared_file("prontoqa/prontoqa_valid.json"))


def _structure_of(problem: Problem) -> dict[str, int]:
    counts = profile(problem)
    return {key: counts[key] for key in structure(5)}


# ---------------------------------------------------------------- the text


def test_sentences_round_trip():
    facts = [
        Fact("tumpus", "gorpus", False, EVERY),
        Fact("tumpus", "impus", False, EACH),
        Fact("wumpus", "happy", True, PLURAL),
        Fact("impus", "shumpus", False, PLURAL),
        Fact("Alex", "impus"),
        Fact("Alex", "floral", True),
    ]
    texts = [sentence(f) for f in facts]
    assert texts == [
        "Every tumpus is a gorpus.",
        "Each tumpus is an impus.",
        "Wumpuses are not happy.",
        "Impuses are shumpuses.",
        "Alex is an impus.",
        "Alex is not floral.",
    ]
    assert [parse_sentence(t) for t in texts] == facts


@pytest.mark.parametrize(
    "text", ["Every tumpus is a impus.", "Tumpuss are happy.", "Every tumpus are happy.", "Alex is a  tumpus."]
)
def test_sentences_out_of_format_are_rejected(text):
    with pytest.raises(ValueError, match="not a (ProntoQA sentence|plural)"):
        parse_sentence(text)


# ---------------------------------------------------------------- the checker on real and generated records


def test_real_records_pass_the_checker_and_share_one_structure(shared_file, real_valid):
    train = load_coconut(shared_file("prontoqa/prontoqa_train.json"))
    assert (len(train), len(real_valid)) == (9000, 200)
    for record in train:
        check_prontoqa(record)
    for record in real_valid:
        assert _structure_of(record) == structure(5)  # checks the record, too


@pytest.mark.parametrize("hops", range(1, 7))
def test_generated_records_pass_the_checker(hops):
    for problem in generate("prontoqa", 30, seed=hops, min_hops=hops, max_hops=hops):
        assert _structure_of(problem) == structure(hops)
        assert len(problem.steps) == hops + 1 == problem.meta["hops"] + 1
        assert problem.answer in ("True", "False")


def test_other_vocabularies_are_used_and_checked():
    words = ["fox", "cat", "dog", "bee", "owl", "emu", "yak", "gnu", "ant", "elk", "ram", "hen", "eel", "ape"]
    for problem in generate("prontoqa", 20, seed=3, concept_words=words, person_names=["Zed"]):
        check_prontoqa(problem)
        facts, query = parse_question(problem.question)
        assert query.subject == "Zed"
        assert {f.subject for f in facts if f.quantifier} <= set(words)


def _broken(problem: Problem, **changes) -> Problem:
    fields = {"question": problem.question, "steps": list(problem.steps), "answer": problem.answer} | changes
    return Problem(meta=problem.meta, **fields)


@pytest.fixture
def sample() -> Problem:
    return generate("prontoqa", 1, seed=11)[0]


def test_checker_rejects_a_swapped_answer(sample):
    flipped = "False" if sample.answer == "True" else "True"
    with pytest.raises(ValueError, match="answer"):
        check_prontoqa(_broken(sample, answer=flipped))


def test_checker_rejects_a_rule_the_question_does_not_state(sample):
    rule = sample.steps[2].split(". ", 1)[1]
    with pytest.raises(ValueError, match="does not state"):
        check_prontoqa(_broken(sample, question=sample.question.replace(rule + " ", "")))
    facts, _ = parse_question(sample.question)
    stated = {f.predicate for f in facts}
    unused = next(w for w in ("brimpus", "dumpus", "gorpus", "grimpus", "impus") if w not in stated)
    member = sample.steps[2].split(". ", 1)[0]
    invented = sentence(Fact(parse_sentence(member + ".").predicate, unused, False, EVERY))
    with pytest.raises(ValueError, match="does not state"):
        check_prontoqa(_broken(sample, steps=sample.steps[:2] + [f"{member}. {invented}"] + sample.steps[3:]))


def test_checker_rejects_a_skipped_step_and_a_wrong_conclusion(sample):
    with pytest.raises(ValueError, match="follows neither"):
        check_prontoqa(_broken(sample, steps=sample.steps[:2] + sample.steps[3:]))
    conclusion = parse_sentence(sample.steps[-1])
    wrong = sentence(Fact(conclusion.subject, conclusion.predicate, not conclusion.negated))
    with pytest.raises(ValueError, match="conclusion"):
        check_prontoqa(_broken(sample, steps=sample.steps[:-1] + [wrong]))


def test_checker_rejects_a_question_about_another_property(sample):
    facts, query = parse_question(sample.question)
    other = next(f.predicate for f in facts if f.about_property and f.predicate != query.predicate)
    asked = sentence(query)
    question = sample.question.replace(asked, sentence(Fact(query.subject, other, query.negated)))
    with pytest.raises(ValueError, match="asks about"):
        check_prontoqa(_broken(sample, question=question))


def test_checker_rejects_facts_that_contradict_the_proof(sample):
    conclusion = parse_sentence(sample.steps[-1])
    first_class = parse_sentence(sample.steps[0].split(". ")[0] + ".").predicate
    contradiction = sentence(Fact(first_class, conclusion.predicate, not conclusion.negated, EACH))
    with pytest.raises(ValueError, match="both"):
        check_prontoqa(_broken(sample, question=f"{contradiction} {sample.question}"))


# ---------------------------------------------------------------- statistics


def test_statistics_match_the_real_validation_file(real_valid):
    generated = generate("prontoqa", 1000, seed=0)
    rows = compare_stats(generated, real_valid)
    assert rows["steps.mean"]["generated"] == rows["steps.max"]["generated"] == rows["steps.mean"]["real"] == 6
    for key in ("question_words.mean", "cot_words.mean", "answer_words.mean"):
        assert rows[key]["relative_gap"] <= WORDS_REL, comparison_table(rows)
    gen, real = mean_profile(generated), mean_profile(real_valid)
    assert {key: gen[key] for key in structure(5)} == {key: real[key] for key in structure(5)} == structure(5)
    assert abs(gen["plural_facts"] - real["plural_facts"]) <= PLURAL_FACTS_REL * real["plural_facts"], (gen, real)
    assert abs(gen["negated_properties"] - real["negated_properties"]) <= NEGATED_PROPERTIES_ABS, (gen, real)
    for key in ("true", "query_negated"):
        assert abs(gen[key] - real[key]) <= TRUE_SHARE_ABS, (key, gen[key], real[key])


# ---------------------------------------------------------------- parameters and sources


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"min_hops": 0}, "min_hops"),
        ({"max_hops": 7}, "max_hops"),
        ({"min_hops": 4, "max_hops": 3}, "min_hops"),
        ({"min_hops": 2.5}, "min_hops"),
        ({"concept_words": ["tumpus"] * 14}, "concept_words"),
        ({"concept_words": ["Tumpus"] + [f"w{'a' * i}pus" for i in range(13)]}, "concept_words"),
        ({"person_names": ["alex"]}, "person_names"),
        ({"person_names": ["Every"]}, "person_names"),
        ({"person_names": []}, "person_names"),
    ],
)
def test_bad_parameters_name_the_parameter(params, named):
    with pytest.raises(ConfigError, match=named):
        generate("prontoqa", 2, **params)


def test_synthetic_source_gives_each_split_its_own_problems():
    train = load_problems("synthetic:prontoqa", "train", limit=5)
    valid = load_problems("synthetic:prontoqa", "valid", limit=5)
    assert train == generate("prontoqa", 5, seed=0)
    assert not {p.question for p in train} & {p.question for p in valid}
