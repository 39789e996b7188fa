"""Prompts for pretrained chat models: chat template, system prompt, few-shot turns, answer instruction,
thinking delimiters, and the token ids that end a reply.

A model trained here reads `question\\n` (its training layout, `latentreason.layout`); a pretrained
instruct model answers well only inside its own chat template, so evaluation builds the prompt the way
the model was tuned: `tokenizer.apply_chat_template(messages, add_generation_prompt=True)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from latentreason.data.problems import Problem
from latentreason.errors import ConfigError, UserError

PLACEHOLDER = "{question}"
# The user turn for boxed answers (the wording math-tuned instruct models are trained on).
BOXED_TEMPLATE = PLACEHOLDER + "\nPlease reason step by step, and put your final answer within \\boxed{}."
THINK_START, THINK_END = "<think>", "</think>"
PLAIN_NOTE = "the tokenizer has no chat template: each prompt is plain text, the question followed by a newline"
# Stands for an assistant reply when rendering the template, to find the token that closes a turn.
_REPLY = "LATENTREASON-REPLY-7f3a"


@dataclass
class PromptBuilder:
    """Token ids of the prompt for one question, and the ids that end the model's reply.

    With a chat template: [system] + (user, assistant) per few-shot example + user, then the template's
    generation prompt. Without one: the same pieces as plain text (`PLAIN_NOTE`), after the BOS token.
    """

    tokenizer: Any = field(repr=False)
    # The text a reply's answer follows when the prompt asks for a box (BOXED_TEMPLATE, RL's default): where HRPO's
    # thinking ends unless told otherwise.
    answer_marker: ClassVar[str] = "\\boxed"
    system_prompt: str | None = None  # None: the template's own default, if it has one (SmolLM2's does)
    few_shot: Sequence[tuple[str, str]] = ()  # (question, assistant reply) pairs, shown in this order
    template: str = PLACEHOLDER  # the user turn; "{question}" is replaced (not str.format: LaTeX braces stay)
    think_start: str = THINK_START  # thinking delimiters for the step engine's decoders; plain text when
    think_end: str = THINK_END  # the vocabulary lacks them as tokens (see `think_ids`)
    extra_stop_ids: Sequence[int] = ()  # e.g. the model's generation_config.eos_token_id list

    def __post_init__(self):
        if PLACEHOLDER not in self.template:
            raise ConfigError(f"prompt template {self.template!r} must contain {PLACEHOLDER} where the question goes")
        if not self.think_start or not self.think_end:
            raise ConfigError("think_start and think_end must be non-empty strings")

    @property
    def uses_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def user_text(self, question: str) -> str:
        return self.template.replace(PLACEHOLDER, question.strip())

    def messages(self, question: str) -> list[dict[str, str]]:
        """The conversation for `question`, ending with its user turn."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for shot_question, reply in self.few_shot:
            messages += [
                {"role": "user", "content": self.user_text(shot_question)},
                {"role": "assistant", "content": reply},
            ]
        return messages + [{"role": "user", "content": self.user_text(question)}]

    def text(self, question: str) -> str:
        """The prompt as text (what `ids` tokenizes), for reading and for the records."""
        return self.conversation_text(self.messages(question))

    def ids(self, question: str) -> list[int]:
        return self.conversation_ids(self.messages(question))

    def conversation_text(self, messages: list[dict[str, str]]) -> str:
        """A conversation ending with a user turn, as the prompt of the assistant's reply (a server's chat
        requests): the chat template's rendering, or without one each message's text, a user turn and the
        reply after it on consecutive lines, blank lines between turns."""
        if self.uses_chat_template:
            return self._render(messages, add_generation_prompt=True)
        pieces: list[str] = []
        for message, before in zip(messages, [None, *messages]):
            if message["role"] == "assistant" and before is not None and before["role"] == "user":
                pieces[-1] += "\n" + message["content"]
            else:
                pieces.append(message["content"])
        return "\n\n".join(pieces) + "\n"

    def conversation_ids(self, messages: list[dict[str, str]]) -> list[int]:
        # A chat template writes its own BOS (if any) into the text; plain text gets the tokenizer's BOS,
        # as the training layout does.
        ids = self.tokenizer(self.conversation_text(messages), add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        return ids if self.uses_chat_template or bos is None else [bos, *ids]

    def end_of_turn_id(self) -> int | None:
        """The special token the chat template writes right after an assistant reply (`<|im_end|>` in ChatML,
        `<|eot_id|>` in Llama 3, `<end_of_turn>` in Gemma), or None without a template or such a token."""
        if not self.uses_chat_template:
            return None
        turns = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": _REPLY}]
        rendered = self._render(turns, add_generation_prompt=False)
        after = rendered.split(_REPLY, 1)[1].lstrip() if _REPLY in rendered else ""
        ids = self.tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
        special = set(self.tokenizer.all_special_ids) | set(self.tokenizer.added_tokens_decoder)
        return ids[0] if ids and ids[0] in special else None

    def stop_ids(self) -> list[int]:
        """EOS, the end-of-turn token and `extra_stop_ids`, each once."""
        found = [self.tokenizer.eos_token_id, self.end_of_turn_id(), *self.extra_stop_ids]
        ids = list(dict.fromkeys(i for i in found if i is not None))
        if not ids:
            raise UserError("the tokenizer has no eos_token and no end-of-turn token: nothing would end a reply")
        return ids

    def think_ids(self) -> tuple[list[int], list[int]]:
        """Token ids of `think_start` and `think_end`: one id each when the vocabulary has them as tokens."""
        tokens = self.tokenizer([self.think_start, self.think_end], add_special_tokens=False)["input_ids"]
        return tokens[0], tokens[1]

    def settings(self) -> dict[str, Any]:
        """What shaped the prompts, for results.json."""
        start_ids, end_ids = self.think_ids()
        stop_ids = self.stop_ids()
        return {
            "chat_template": self.uses_chat_template,
            "system_prompt": self.system_prompt,
            "template": self.template,
            "few_shot": len(self.few_shot),
            "think_start": self.think_start,
            "think_end": self.think_end,
            "think_single_tokens": len(start_ids) == 1 and len(end_ids) == 1,
            "stop_ids": stop_ids,
            "stop_tokens": self.tokenizer.convert_ids_to_tokens(stop_ids),
        }

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        from jinja2.exceptions import TemplateError

        try:
            return self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        except TemplateError as err:  # e.g. a template without a system role, given --system-prompt
            roles = "/".join(dict.fromkeys(m["role"] for m in messages))
            raise UserError(f"the model's chat template rejected a conversation of roles {roles}: {err}") from err


def few_shot_pairs(problems: Sequence[Problem], answer_mode: str) -> list[tuple[str, str]]:
    """(question, reply) pairs whose replies show the reasoning and the answer in the form `answer_mode` reads.

    The reasoning is the natural-language solution when the data has one (GSM8K's `meta["solution"]`),
    else the chain-of-thought steps.
    """
    pairs = []
    for problem in problems:
        reasoning = str(problem.meta.get("solution") or problem.cot).strip()
        if answer_mode in ("boxed", "auto"):
            final = f"The final answer is \\boxed{{{problem.answer}}}."
        elif answer_mode == "strict":
            final = f"#### {problem.answer}"
        else:
            final = f"The answer is {problem.answer}."
        pairs.append((problem.question, f"{reasoning}\n{final}" if reasoning else final))
    return pairs
