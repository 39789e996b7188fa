"""iCoT, stepwise internalization (Deng et al. 2024): CoT-SFT while CoT tokens are removed from the left.

At optimizer step t, `remove_per_epoch * t / steps_per_epoch` tokens are scheduled for removal (whole
tokens, so it grows by one every steps_per_epoch / remove_per_epoch steps); each example removes that
many plus a random offset drawn from an exponential with rate `removal_smoothing_lambda` (truncated
at the CoT length), which smooths the jump between stages. Once `remove_all_when_remove_beyond` tokens
are scheduled, the whole CoT is removed (0: never, the reference's default). The optimizer can be reset
whenever the count grows, as the reference does, except once the whole CoT is gone (the reference stops
resetting then too). The solver is plain generation: a fully trained model answers without reasoning text.
Compared line by line with the reference in docs/results/reproduction.md ("Our code against the reference").
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass

from latentreason.config import field
from latentreason.engine.batch import IGNORE, left_pad
from latentreason.errors import ConfigError
from latentreason.layout import encode_problem
from latentreason.methods.base import register_method
from latentreason.methods.sft import TextSFT
from latentreason.train_config import SFTConfig


@dataclass
class ICoTConfig(SFTConfig):
    remove_per_epoch: float = field(8.0, help="CoT tokens removed per epoch (the reference uses 8)")
    removal_smoothing_lambda: float = field(4.0, help="rate of the exponential extra-removal offset (0 disables)")
    remove_all_when_remove_beyond: int = field(
        39,
        help="once this many tokens are scheduled, remove the whole CoT (the reference uses 39 for GSM; "
        "0: never, the reference's default)",
    )
    reset_optimizer: bool = field(True, help="fresh AdamW state each time the scheduled count grows")

    def __post_init__(self):
        super().__post_init__()
        if self.remove_per_epoch <= 0 or self.removal_smoothing_lambda < 0 or self.remove_all_when_remove_beyond < 0:
            raise ConfigError(
                "remove_per_epoch must be > 0, removal_smoothing_lambda >= 0, remove_all_when_remove_beyond >= 0"
            )


@register_method("icot")
class ICoT(TextSFT):
    config_cls = ICoTConfig

    def __init__(self, config: ICoTConfig):
        super().__init__(config)
        self.scheduled = 0
        self.step = 0

    def scheduled_at(self, step: int, steps_per_epoch: int) -> int:
        """CoT tokens scheduled for removal at optimizer step `step`."""
        return math.floor(self.config.remove_per_epoch * step / steps_per_epoch)

    def removes_all(self, scheduled: int) -> bool:
        """Whether `scheduled` tokens mean the whole CoT goes."""
        beyond = self.config.remove_all_when_remove_beyond
        return beyond > 0 and scheduled >= beyond

    def final_layout_step(self, steps_per_epoch: int) -> int | None:
        beyond = self.config.remove_all_when_remove_beyond
        if beyond == 0:
            return None  # the CoT is gone once the count passes the longest one: a property of the data
        step = math.ceil(beyond * steps_per_epoch / self.config.remove_per_epoch)
        while step > 0 and self.removes_all(self.scheduled_at(step - 1, steps_per_epoch)):
            step -= 1  # float rounding: the first step whose count reaches the threshold
        while not self.removes_all(self.scheduled_at(step, steps_per_epoch)):
            step += 1
        return step

    def start_step(self, step: int, steps_per_epoch: int) -> bool:
        # The count before this step comes from the schedule, not from the last call: a resumed run
        # (a fresh method) must not reset where the uninterrupted run did not.
        before = self.scheduled_at(step - 1, steps_per_epoch) if step > 0 else 0
        self.scheduled, self.step = self.scheduled_at(step, steps_per_epoch), step
        # As the reference: no reset once the previous step already trained without any CoT.
        return self.config.reset_optimizer and self.scheduled > before and not self.removes_all(before)

    def removed_tokens(self, problem, cot_length: int) -> int:
        """Tokens to drop from the left of this example's CoT (deterministic per (seed, step, question))."""
        if self.removes_all(self.scheduled):
            return cot_length
        offset = 0
        lam = self.config.removal_smoothing_lambda
        if lam > 0:
            rng = random.Random(zlib.crc32(f"{self.config.seed}|{self.step}|{problem.question}".encode()))
            # Truncated exponential: P(offset = k) proportional to exp(-lam * k), k = 0..cot_length.
            weights = [math.exp(-lam * k) for k in range(cot_length + 1)]
            offset = rng.choices(range(cot_length + 1), weights=weights)[0]
        return min(cot_length, self.scheduled + offset)

    def collate(self, lm, problems):
        sequences, labels = [], []
        for problem in problems:
            enc = encode_problem(lm.tokenizer, problem)
            target = enc.cot[self.removed_tokens(problem, len(enc.cot)) :] + enc.answer
            sequences.append(enc.prompt + target)
            labels.append([IGNORE] * len(enc.prompt) + target)
        return left_pad(sequences, lm.pad_id, labels)
