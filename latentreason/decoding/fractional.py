"""Fractional Reasoning (arXiv 2506.15882): steer the query's hidden states along a "reason more" direction by
a scale alpha, decode once per scale, and keep one reply per problem (majority vote, or best-of-N with a scorer).

Steering vectors (once per model): m prompt pairs, each a question under a positive instruction (reason step by
step) and a negative one (answer directly); per steered decoder layer, the last-token outputs of the pair are
subtracted, and that layer's vector v points along the first principal direction of the m differences
(uncentred, signed along their mean). Its length is the differences' mean length along that direction, so
alpha = 1 is the average shift the instructions themselves cause and alpha is comparable across layers and
models (`unit_vector: true` gives the paper's unit vector, where alpha is in the model's own units).

Steering: while the prompts are prefilled, every steered layer's output h at every prompt token becomes
(h + alpha v) x |h| / |h + alpha v|, the norm kept. Generated tokens are not steered (the paper steers the query
tokens): they see the steered prompt through the KV cache. The hooks exist only during the prefill.

Sweep: each context row becomes K rows, one per scale (row r x K + j has scales[j]; all K share the row's
seed, so with sampling the scales differ only by alpha). Each problem's reply is the majority vote over the
K final answers (`extract_answer`), or, when the decoder has a `scorer(question, reply) -> float`, the
highest-scoring reply (best-of-N). With scales [0] this is plain decoding, token for token.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from latentreason.config import field
from latentreason.data.answers import MODES
from latentreason.decoding.base import DecodeContext, Decoder, Generation, register_decoder
from latentreason.decoding.prompts import CHAT_TEMPLATE, user_turn
from latentreason.decoding.steering import steering, steering_vectors
from latentreason.decoding.vote import best_scored, majority_vote
from latentreason.engine.batch import left_pad
from latentreason.engine.decode import TokenPolicy
from latentreason.engine.decoder_layers import decoder_layers
from latentreason.engine.steps import Trace, prefill, run_steps
from latentreason.errors import ConfigError

Scorer = Callable[[str, str], float]  # (question, reply) -> score; higher is better

DEFAULT_QUESTIONS = [
    "A baker makes 24 rolls and sells 17 of them. How many rolls are left?",
    "Tom reads 12 pages a day. How many pages does he read in 5 days?",
    "A ticket costs 8 dollars. How much do 7 tickets cost?",
    "Anna has 45 stickers and gives a third of them to her brother. How many does she keep?",
    "A train travels 60 miles per hour for 3 hours. How far does it go?",
    "There are 9 boxes with 6 apples each, and 5 apples are eaten. How many apples remain?",
    "Sam saves 15 dollars a week. How many weeks does he need to save 120 dollars?",
    "A garden is 7 meters long and 4 meters wide. What is its area?",
]


@dataclass
class FractionalConfig:
    scales: list[float] = field([0.0, 0.25, 0.5, 0.75, 1.0], help="steering scales alpha, one reply per problem each")
    layers: list[int] = field([], help="decoder layers to steer (0-based indices; empty: all)")
    unit_vector: bool = field(
        False, help="steering vectors of length 1 (the paper's equation) instead of the mean shift"
    )
    positive: str = field(
        "Solve this problem, reasoning carefully step by step before giving the final answer.\n{question}",
        help="the instruction that asks for reasoning; {question} is replaced by each question",
    )
    negative: str = field(
        "Solve this problem by giving only the final answer, without any reasoning.\n{question}",
        help="the instruction that asks for a direct answer; {question} is replaced by each question",
    )
    questions: list[str] = field(DEFAULT_QUESTIONS, help="the questions of the contrastive prompt pairs")
    chat_template: str = field("auto", help=f"wrap pair prompts as a chat user turn: {', '.join(CHAT_TEMPLATE)}")
    answer_mode: str = field("flexible", help=f"how the vote reads final answers: {', '.join(MODES)}")

    def __post_init__(self):
        if not self.scales or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in self.scales):
            raise ConfigError(f"scales: expected a non-empty list of numbers, got {self.scales!r}")
        self.scales = [float(s) for s in self.scales]
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers):
            raise ConfigError(f"layers: expected layer indices >= 0 (empty: all), got {self.layers!r}")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"layers: each layer at most once, got {self.layers!r}")
        for name in ("positive", "negative"):
            if "{question}" not in getattr(self, name):
                raise ConfigError(f"{name}: must contain {{question}}, got {getattr(self, name)!r}")
        if not self.questions or not all(isinstance(q, str) and q.strip() for q in self.questions):
            raise ConfigError(f"questions: expected a non-empty list of non-empty strings, got {self.questions!r}")
        if self.chat_template not in CHAT_TEMPLATE:
            raise ConfigError(f"chat_template: expected one of {', '.join(CHAT_TEMPLATE)}, got {self.chat_template!r}")
        if self.answer_mode not in MODES:
            raise ConfigError(f"answer_mode: expected one of {', '.join(MODES)}, got {self.answer_mode!r}")


@dataclass
class SweepGeneration(Generation):
    """`trace`: each row's chosen reply. `sweep`: every reply, row r x K + j decoded with scales[j]."""

    sweep: Generation
    scales: torch.Tensor  # [K]
    chosen: torch.Tensor  # [B] the scale index of each row's reply


def take_rows(trace: Trace, rows: torch.Tensor) -> Trace:
    """The trace of the rows `rows` [n], in that order."""
    return Trace(trace.kind[rows], trace.tokens[rows], trace.logprobs[rows])


@register_decoder("fractional")
class FractionalReasoning(Decoder):
    """`scorer` (constructor argument or attribute): best-of-N by score(question, reply); None: majority vote."""

    config_cls = FractionalConfig

    def __init__(self, config: FractionalConfig, scorer: Scorer | None = None):
        super().__init__(config)
        self.scorer = scorer  # None: majority vote
        self._vectors: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # lm -> [n_layers, d]

    def layers(self, lm) -> list[int]:
        count = len(decoder_layers(lm))
        outside = [i for i in self.config.layers if i >= count]
        if outside:
            raise ConfigError(f"layers: the model has {count} decoder layers (0 to {count - 1}), got {outside}")
        return list(self.config.layers) or list(range(count))

    def vectors(self, lm) -> torch.Tensor:
        """[n_layers, d] the steering vectors of `lm`'s steered layers, computed on first use."""
        if lm not in self._vectors:
            cfg = self.config
            pairs = [
                [user_turn(lm.tokenizer, template.replace("{question}", q), cfg.chat_template) for q in cfg.questions]
                for template in (cfg.positive, cfg.negative)
            ]
            self._vectors[lm] = steering_vectors(lm, pairs[0], pairs[1], self.layers(lm), cfg.unit_vector)
        return self._vectors[lm]

    @torch.no_grad()
    def generate(self, lm, context: DecodeContext) -> SweepGeneration:
        scales = torch.tensor(self.config.scales, device=lm.device)  # [K]
        k, rows = len(self.config.scales), context.rows
        source = torch.arange(rows).repeat_interleave(k)  # [R*K] the context row of each sweep row
        prompts = [context.prompts[row // context.samples] for row in source.tolist()]
        alpha = scales.repeat(rows)  # [R*K]
        query = left_pad(prompts, lm.pad_id)["attention_mask"].bool().to(lm.device)  # [R*K, P] as prefill pads
        with steering(lm, self.vectors(lm), self.layers(lm), alpha, query):
            prefix = prefill(lm, prompts)
        sampling = context.sampling.take(source.to(context.sampling.temperature.device))
        seeds = context.seeds[source.to(context.seeds.device)]
        policy = TokenPolicy(rows * k, lm.device, context.stop_ids, context.max_new_tokens, sampling, seeds)
        sweep = Generation(run_steps(lm, prefix, policy, context.max_new_tokens, batch_size=rows * k))
        chosen = torch.tensor(self.choose(lm, context, sweep, k), dtype=torch.long)  # [R]
        picked = (torch.arange(rows) * k + chosen).to(sweep.trace.kind.device)
        return SweepGeneration(take_rows(sweep.trace, picked), sweep, scales, chosen)

    def choose(self, lm, context: DecodeContext, sweep: Generation, k: int) -> list[int]:
        """Per context row, the scale index of the reply it keeps."""
        texts = [
            lm.tokenizer.decode(sweep.tokens(row), skip_special_tokens=True) for row in range(sweep.trace.kind.shape[0])
        ]
        groups = [texts[row * k : (row + 1) * k] for row in range(context.rows)]
        if self.scorer is None:
            return [majority_vote(group, self.config.answer_mode) for group in groups]
        questions = context.question_texts(lm.tokenizer)
        return [
            best_scored([self.scorer(questions[row // context.samples], text) for text in group])
            for row, group in enumerate(groups)
        ]
