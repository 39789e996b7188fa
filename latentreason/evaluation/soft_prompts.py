"""The two prompts of a soft-thought model (SoftCoT), the same in training and at evaluation.

- assistant: its chat turn asking for hints on the question, then N slots at the very end (the thoughts
  are its last hidden states there, so left padding puts every row's slots at the same columns);
- main model: the user turn a pretrained model is evaluated with (`latentreason eval --model smollm2`: the
  question, then the boxed-answer instruction for answer modes boxed/auto) with one line of N slots between
  them; the reply it is trained on is the worked solution ending in the form the answer mode reads.

Slots are placeholder ids whose embeddings are replaced, so any id serves: the tokenizer's pad token.
Models without a chat template get the plain-text layout of `PromptBuilder`.
"""

from __future__ import annotations

from latentreason.data.problems import Problem
from latentreason.evaluation.prompting import BOXED_TEMPLATE, PLACEHOLDER, PromptBuilder, few_shot_pairs

# Marks where the slots go in the rendered text; the text around it is tokenized in two pieces.
_SLOTS = "LATENTREASON-SLOTS-5c1e"
THOUGHTS_LINE = "Soft thoughts: "
ASSISTANT_TEMPLATE = "Write hints that help another model solve this problem:\n" + PLACEHOLDER


def main_template(answer_mode: str) -> str:
    """The evaluated user turn with the line of thought slots after the question."""
    plain = BOXED_TEMPLATE if answer_mode in ("boxed", "auto") else PLACEHOLDER
    return plain.replace(PLACEHOLDER, f"{PLACEHOLDER}\n{THOUGHTS_LINE}{_SLOTS}", 1)


class SoftThoughtPrompts:
    """Token ids of both prompts for `num_thoughts` slots; `answer_mode` shapes the user turn and the reply."""

    def __init__(self, tokenizer, assistant_tokenizer, num_thoughts: int, answer_mode: str):
        self.main = PromptBuilder(tokenizer, template=main_template(answer_mode))
        self.assistant = PromptBuilder(assistant_tokenizer, template=ASSISTANT_TEMPLATE)
        self.num_thoughts, self.answer_mode = num_thoughts, answer_mode
        self.stop_ids = self.main.stop_ids()
        turn_end = self.main.end_of_turn_id()  # <|im_end|> for a ChatML model; none in plain text
        self.reply_end = tokenizer.eos_token_id if turn_end is None else turn_end

    def main_ids(self, question: str) -> tuple[list[int], int]:
        """(the main model's prompt ids, the index of its first slot)."""
        before, after = self.main.text(question).split(_SLOTS)
        head, tail = _ids(self.main, before, bos=True), _ids(self.main, after)
        return head + [self.main.tokenizer.pad_token_id] * self.num_thoughts + tail, len(head)

    def assistant_ids(self, question: str) -> list[int]:
        """The assistant's prompt ids, its last `num_thoughts` being the slots."""
        text = self.assistant.text(question)
        return _ids(self.assistant, text, bos=True) + [self.assistant.tokenizer.pad_token_id] * self.num_thoughts

    def reply_ids(self, problem: Problem) -> list[int]:
        """What the main model is trained to answer: the worked solution, then the token that ends its turn."""
        reply = few_shot_pairs([problem], self.answer_mode)[0][1]
        return _ids(self.main, reply) + [self.reply_end]


def _ids(prompt: PromptBuilder, text: str, bos: bool = False) -> list[int]:
    """`text` tokenized as `PromptBuilder.ids` does: a chat template writes its own BOS, plain text gets one."""
    ids = prompt.tokenizer(text, add_special_tokens=False)["input_ids"]
    first = prompt.tokenizer.bos_token_id
    return [first, *ids] if bos and not prompt.uses_chat_template and first is not None else ids
