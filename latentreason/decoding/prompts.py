"""Token ids of a text a decoder sends the model itself (a steering prompt, a verification question)."""

from __future__ import annotations

from latentreason.errors import ConfigError

CHAT_TEMPLATE = ("auto", "always", "never")


def user_turn(tokenizer, text: str, chat_template: str = "auto") -> list[int]:
    """`text` as a user turn of the tokenizer's chat template, ready for the reply ("auto": when the tokenizer
    has a template), or as plain text ("never", or "auto" without a template)."""
    if chat_template == "always" and not tokenizer.chat_template:
        raise ConfigError("chat_template: 'always', but the tokenizer has no chat template")
    if chat_template == "never" or not tokenizer.chat_template:
        return tokenizer(text)["input_ids"]
    turn = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
