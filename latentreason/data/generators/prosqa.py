"""ProsQA-style graph questions (Coconut, Hao et al. 2024, arXiv 2412.06769, appendix).

A random DAG whose sources are people and whose other nodes are nonsense concepts ("-pus" words).
The question lists every edge as a fact ("Tom is a terpus." / "Every terpus is a brimpus.") in
shuffled order and asks "Is Tom a A or B?": A (the target) is reachable from Tom, B (neg_target) is
not. The chain of thought is a shortest path from Tom to the target, one fact per step.

Construction (our own, tuned to the statistics of the released validation file): node indices are a
topological order. Concepts on the root's side get levels 1..hops (a few hops+1), each with a first parent one
level up and extra parents from earlier root-side nodes; concepts off it take parents only from
other people and off-side concepts, so they stay unreachable from the root. The target is a leaf at
exactly `hops` edges from the root, the distractor an off-side leaf; a few edges from the other side
into root-side leaves are added last. Graphs without a valid pair are redrawn from the same random
stream, so the output stays a pure function of the seed.
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from latentreason.data.problems import Problem
from latentreason.errors import ConfigError

NAME = "prosqa"

# Our own word list: onset x rime + "pus" (covers the style of the original vocabulary).
_ONSETS = ["", "b", "br", "ch", "d", "f", "g", "gr", "gw", "h", "j", "k", "l", "n", "qu", "r"]
_ONSETS += ["sc", "scr", "sh", "st", "t", "v", "w", "y", "z", "zh"]
_RIMES = ["im", "um", "or", "er", "em", "om", "el", "oom", "il"]
CONCEPT_WORDS = [onset + rime + "pus" for onset in _ONSETS for rime in _RIMES]

PERSON_NAMES = [
    "Alex", "Amy", "Ben", "Bob", "Carl", "Carol", "Dan", "Davis", "Eva", "Fae", "Finn", "Gabriel",
    "Grace", "Hugo", "Ivy", "Jack", "Jane", "Kim", "Leo", "Lily", "Max", "Mia", "Nina", "Oliver",
    "Polly", "Rex", "Rose", "Sally", "Sam", "Stella", "Tom", "Uma", "Wren", "Zoe",
]  # fmt: skip

# Default distributions, read off prosqa_valid.json (300 records).
NODE_COUNT_WEIGHTS = dict(zip(range(17, 29), [2, 5, 14, 18, 37, 48, 58, 52, 40, 22, 3, 1]))
HOP_WEIGHTS = {3: 124, 4: 133, 5: 36, 6: 7}
EXTRA_PERSON_WEIGHTS = {0: 180, 1: 93, 2: 21, 3: 5, 4: 1}
PARENT_COUNT_WEIGHTS = {1: 2989, 2: 1899, 3: 848, 4: 256, 5: 80, 6: 17, 7: 3}
ROOT_SIDE_FRACTION = 0.61  # share of concepts reachable from the root (0.61 real)
BEYOND_TARGET_WEIGHT = 0.3  # weight of the level below the target's: the target is not always deepest
# Edges from the other side into the root's side: real ones mostly end in leaves (1.6 per record)
# and rarely in inner nodes (0.3), so the target is seldom reachable from another person.
CROSS_LEAF_PROB = 0.5
CROSS_INNER_PROB = 0.015
MAX_REDRAWS = 200


def _weighted(rng: random.Random, weights: dict[int, float]) -> int:
    keys = sorted(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


def _distances(num_nodes: int, edges: Sequence[Sequence[int]], source: int) -> dict[int, int]:
    children: list[list[int]] = [[] for _ in range(num_nodes)]
    for parent, child in edges:
        children[parent].append(child)
    dist, queue = {source: 0}, deque([source])
    while queue:
        node = queue.popleft()
        for child in children[node]:
            if child not in dist:
                dist[child] = dist[node] + 1
                queue.append(child)
    return dist


@dataclass
class _Draft:
    """A graph before the question is chosen: parents of each concept, both sides, no cross edges."""

    root: int
    persons: set[int]
    parents: dict[int, list[int]] = field(default_factory=dict)
    root_side: set[int] = field(default_factory=set)
    off_side: list[int] = field(default_factory=list)


def _draw(rng: random.Random, num_nodes: int, num_persons: int, hops: int) -> _Draft | None:
    """Persons are nodes 0, 1 and random extras; node indices are a topological order.

    Root-side concepts get a level 1..hops+1 (every level up to `hops` used, sorted by node index so
    parents come first); each one's first parent sits one level up, so level `hops` is `hops` edges
    from the root unless an extra parent gives a shortcut.
    """
    if num_nodes - num_persons < hops + 1:  # too few concepts for the path plus a distractor
        return None
    persons = {0, 1} | set(rng.sample(range(2, num_nodes), num_persons - 2))
    draft = _Draft(rng.randrange(2), persons)
    concepts = [m for m in range(2, num_nodes) if m not in persons]
    wanted = sum(rng.random() < ROOT_SIDE_FRACTION for _ in concepts)
    num_root_side = min(max(hops, wanted), len(concepts) - 1)  # keep one concept for the distractor
    # Few concepts right under the root, most in the middle, a heavier last level (shortcuts thin it).
    shape = {k: min(k, hops + 1 - k) + 0.5 for k in range(2, hops)}
    shape |= {1: 0.8, hops: 2.0, hops + 1: BEYOND_TARGET_WEIGHT}
    levels = sorted(list(range(1, hops + 1)) + [_weighted(rng, shape) for _ in range(num_root_side - hops)])
    level_of = dict(zip(sorted(rng.sample(concepts, num_root_side)), levels))
    by_level: dict[int, list[int]] = {0: [draft.root]}
    dist = {draft.root: 0}  # shortest distance from the root, known as soon as a node is added
    draft.root_side = {draft.root}
    off_side = [m for m in (0, 1) if m != draft.root]
    draft.off_side = off_side
    for node in range(2, num_nodes):
        if node in persons:
            off_side.append(node)
            continue
        extra = _weighted(rng, PARENT_COUNT_WEIGHTS) - 1
        if node in level_of:
            level = level_of[node]
            # The first node of each level takes no shortcut, so level `hops` is always reached.
            spine = level not in by_level
            above = [m for m in by_level[level - 1] if not spine or dist[m] == level - 1]
            parents = [rng.choice(above)]
            pool = [m for m in sorted(draft.root_side) if m != parents[0] and (not spine or dist[m] >= level - 1)]
            parents += rng.sample(pool, min(extra, len(pool)))
            dist[node] = 1 + min(dist[m] for m in parents)
            by_level.setdefault(level, []).append(node)
            draft.root_side.add(node)
        else:
            # Favour recent nodes as first parent so the distractor side has some depth too.
            first = rng.choices(off_side, weights=range(1, len(off_side) + 1))[0]
            pool = [m for m in off_side if m != first]
            parents = [first] + rng.sample(pool, min(extra, len(pool)))
            off_side.append(node)
        draft.parents[node] = parents
    # A person without facts would not appear in the question: give it a later concept as child.
    has_child = {p for group in draft.parents.values() for p in group}
    for person in sorted(persons - has_child):
        later = [m for m in off_side if m > person and m not in persons]
        if not later:
            return None
        draft.parents[rng.choice(later)].append(person)
    return draft


def _finish(rng: random.Random, draft: _Draft, target: int) -> list[list[int]]:
    """Edges sorted by child, each child's parents in random order, plus edges from the other side.

    Cross edges are added only now because they must mostly avoid the target's ancestors; they start
    at nodes unreachable from the root, so distances from the root do not change.
    """
    sinks = set(draft.parents) - {p for group in draft.parents.values() for p in group}
    edges = []
    for node in sorted(draft.parents):
        group = list(draft.parents[node])
        if node in draft.root_side:
            rate = CROSS_LEAF_PROB if node in sinks and node != target else CROSS_INNER_PROB
            earlier = [m for m in draft.off_side if m < node]
            if earlier and rng.random() < rate:
                group.append(rng.choice(earlier))
        rng.shuffle(group)
        edges.extend([parent, node] for parent in group)
    return edges


def _shortest_path(rng: random.Random, edges: list[list[int]], dist: dict[int, int], target: int) -> list[int]:
    """A uniformly chosen parent at each step back from target gives one shortest path."""
    path = [target]
    while dist[path[-1]] > 0:
        node = path[-1]
        options = [p for p, c in edges if c == node and dist.get(p) == dist[node] - 1]
        path.append(rng.choice(options))
    return path[::-1]


def fact(symbols: Sequence[str], parent: int, child: int) -> str:
    """The sentence for one edge; people are the only nodes named with a capital letter."""
    if symbols[parent][:1].isupper():
        return f"{symbols[parent]} is a {symbols[child]}."
    return f"Every {symbols[parent]} is a {symbols[child]}."


def check_prosqa(problem: Problem) -> None:
    """Raise ValueError unless the record is consistent (works on real ProsQA records too)."""
    meta = problem.meta
    symbols, edges = meta["idx_to_symbol"], meta["edges"]
    root, target, neg = meta["root"], meta["target"], meta["neg_target"]
    dist = _distances(len(symbols), edges, root)
    if target not in dist:
        raise ValueError("target is not reachable from the root")
    if neg in dist:
        raise ValueError("neg_target is reachable from the root")
    if len(problem.steps) != dist[target]:
        raise ValueError(f"{len(problem.steps)} steps but the shortest path has {dist[target]}")
    facts = {fact(symbols, p, c): (p, c) for p, c in edges}
    node = root
    for step in problem.steps:
        if step not in facts or facts[step][0] != node:
            raise ValueError(f"step {step!r} does not continue the path from {symbols[node]}")
        node = facts[step][1]
    if node != target:
        raise ValueError("the path does not end at the target")
    person, yes, no = symbols[root], symbols[target], symbols[neg]
    options = {f"Is {person} a {yes} or {no}?", f"Is {person} a {no} or {yes}?"}
    body, _, asked = problem.question.rpartition(" Is ")
    if "Is " + asked not in options:
        raise ValueError(f"question does not end with one of {sorted(options)}")
    if sorted(s.strip() for s in re.findall(r"[^.]+\.", body)) != sorted(facts):
        raise ValueError("the question's facts are not exactly the graph's edges")
    if problem.answer != f"{person} is a {yes}.":
        raise ValueError(f"answer {problem.answer!r} does not name the target")


def generate_prosqa(
    n: int,
    seed: int = 0,
    hop_weights: dict[int, float] | None = None,
    node_count_weights: dict[int, float] | None = None,
    concept_words: Sequence[str] | None = None,
    person_names: Sequence[str] | None = None,
) -> list[Problem]:
    """`n` ProsQA-style problems.

    hop_weights: path length (= reasoning steps) -> relative frequency; default as in the real file.
    node_count_weights: graph size (people + concepts) -> relative frequency; default as in the real file.
    concept_words / person_names: the vocabularies (default: our syllable words and first names).
    """
    hops = dict(HOP_WEIGHTS if hop_weights is None else hop_weights)
    sizes = dict(NODE_COUNT_WEIGHTS if node_count_weights is None else node_count_weights)
    words = list(CONCEPT_WORDS if concept_words is None else concept_words)
    names = list(PERSON_NAMES if person_names is None else person_names)
    if not hops or min(hops) < 1 or max(hops) > 12:
        raise ConfigError(f"{NAME}: hop_weights keys must be path lengths between 1 and 12, got {sorted(hops)}")
    if not sizes or min(sizes) < max(hops) + 3:
        raise ConfigError(f"{NAME}: node_count_weights needs at least {max(hops) + 3} nodes, got {sorted(sizes)}")
    if len(words) < max(sizes) or len(set(words)) != len(words):
        raise ConfigError(f"{NAME}: need at least {max(sizes)} distinct concept_words")
    if len(names) < 2 + max(EXTRA_PERSON_WEIGHTS) or any(not w[:1].isupper() for w in names):
        raise ConfigError(f"{NAME}: need at least {2 + max(EXTRA_PERSON_WEIGHTS)} capitalised person_names")
    if any(w[:1].isupper() for w in words):
        raise ConfigError(f"{NAME}: concept_words must start lower-case (capitals mark people)")
    params = {"hop_weights": hops, "node_count_weights": sizes, "num_concept_words": len(words)}
    rng = random.Random(seed)
    problems = []
    for index in range(n):
        hop_count = _weighted(rng, hops)
        for _ in range(MAX_REDRAWS):
            num_nodes = _weighted(rng, sizes)
            draft = _draw(rng, num_nodes, 2 + _weighted(rng, EXTRA_PERSON_WEIGHTS), hop_count)
            if draft is None:
                continue
            base = [[p, c] for c, group in draft.parents.items() for p in group]
            # Edges into the root's side never change distances from the root, so `dist` is final.
            dist = _distances(num_nodes, base, draft.root)
            has_child = {p for p, _ in base}
            targets = [m for m, d in dist.items() if d == hop_count and m not in has_child]
            if not targets:
                continue
            target = rng.choice(targets)
            edges = _finish(rng, draft, target)
            has_child = {p for p, _ in edges}
            negatives = [m for m in draft.parents if m not in draft.root_side and m not in has_child]
            if negatives:
                break
        else:
            raise ConfigError(f"{NAME}: could not build a graph with a {hop_count}-hop answer; use fewer hops")
        root, persons, neg = draft.root, draft.persons, rng.choice(negatives)
        person_pool = iter(rng.sample(names, len(persons)))
        word_pool = iter(rng.sample(words, num_nodes - len(persons)))
        symbols = [next(person_pool) if m in persons else next(word_pool) for m in range(num_nodes)]
        path = _shortest_path(rng, edges, dist, target)
        facts = [fact(symbols, p, c) for p, c in edges]
        rng.shuffle(facts)
        options = [symbols[target], symbols[neg]]
        rng.shuffle(options)
        question = " ".join(facts) + f" Is {symbols[root]} a {options[0]} or {options[1]}?"
        steps = [fact(symbols, p, c) for p, c in pairwise(path)]
        meta = {
            "generator": NAME,
            "params": params,
            "seed": seed,
            "index": index,
            "idx_to_symbol": symbols,
            "edges": edges,
            "root": root,
            "target": target,
            "neg_target": neg,
        }
        problem = Problem(question=question, steps=steps, answer=f"{symbols[root]} is a {symbols[target]}.", meta=meta)
        check_prosqa(problem)
        problems.append(problem)
    return problems
