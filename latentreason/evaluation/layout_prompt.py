"""The prompt of a model trained here with a text method (cot, icot, no-cot), with the interface of a chat model's
`PromptBuilder` (`ids`, `stop_ids`, `think_ids`, `settings`), so that RL's token policies and the step-engine
decoders run on such a model unchanged.

The prompt is the training layout's (`latentreason.layout`): bos, the question, a newline, token for token what
the method's solver feeds, and a reply ends at eos, where the solver stops. The layout's reply is
`steps \\n ### answer`: thinking is the chain, so it starts after the question's newline and ends where the
answer marker `###` starts. A No-CoT model (or an iCoT model that has dropped its whole chain) writes `###`
first: its thinking is empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from latentreason.errors import UserError
from latentreason.layout import ANSWER_MARKER, encode_question


@dataclass
class LayoutPrompt:
    tokenizer: Any = field(repr=False)
    answer_marker: ClassVar[str] = ANSWER_MARKER  # the answer follows it; HRPO's end of thinking
    think_start: ClassVar[str] = "\n"  # the newline that ends the question opens the chain
    think_end: ClassVar[str] = ANSWER_MARKER

    def ids(self, question: str) -> list[int]:
        return encode_question(self.tokenizer, question)

    def stop_ids(self) -> list[int]:
        if self.tokenizer.eos_token_id is None:
            raise UserError("the model's tokenizer has no eos_token: nothing would end a reply")
        return [self.tokenizer.eos_token_id]

    def think_ids(self) -> tuple[list[int], list[int]]:
        """Token ids of `think_start` and `think_end`, each tokenized on its own as the layout's pieces are."""
        tokens = self.tokenizer([self.think_start, self.think_end], add_special_tokens=False)["input_ids"]
        return tokens[0], tokens[1]

    def settings(self) -> dict[str, Any]:
        """What shaped the prompts, for results.json."""
        stop_ids = self.stop_ids()
        return {
            "layout": "bos question \\n (the model's training layout)",
            "think_start": self.think_start,
            "think_end": self.think_end,
            "stop_ids": stop_ids,
            "stop_tokens": self.tokenizer.convert_ids_to_tokens(stop_ids),
        }
