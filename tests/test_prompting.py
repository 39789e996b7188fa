"""PromptBuilder: chat-template prompts, plain fallback, few-shot turns, stop ids, thinking delimiters."""

from __future__ import annotations

import pytest

from latentreason.data.problems import Problem
from latentreason.errors import ConfigError, UserError
from latentreason.evaluation.prompting import BOXED_TEMPLATE, PromptBuilder, few_shot_pairs
from tests.helpers import tiny_chat_tokenizer

# Llama 3's turn layout: the end-of-turn token is <|eot_id|>, not EOS.
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_chat_tokenizer()


def test_prompt_is_the_chat_template_with_its_generation_prompt(tokenizer):
    builder = PromptBuilder(tokenizer, template=BOXED_TEMPLATE)
    text = builder.text("  What is 2+3? ")
    assert text == (
        "<|im_start|>user\nWhat is 2+3?\nPlease reason step by step, and put your final answer within \\boxed{}."
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert builder.ids("  What is 2+3? ") == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert builder.ids("  What is 2+3? ")[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_system_prompt_and_few_shot_examples_are_turns_before_the_question(tokenizer):
    builder = PromptBuilder(tokenizer, system_prompt="Be brief.", few_shot=[("1+1?", "2"), ("2+2?", "4")])
    roles = [m["role"] for m in builder.messages("3+3?")]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert builder.text("3+3?") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\n3+3?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_the_template_wraps_few_shot_questions_too(tokenizer):
    builder = PromptBuilder(tokenizer, few_shot=[("1+1?", "2")], template="Q: {question}")
    assert [m["content"] for m in builder.messages("3+3?")] == ["Q: 1+1?", "2", "Q: 3+3?"]


def test_a_template_without_the_question_placeholder_is_rejected(tokenizer):
    with pytest.raises(ConfigError, match=r"must contain \{question\}"):
        PromptBuilder(tokenizer, template="Put the answer in \\boxed{}.")


def test_stop_ids_are_eos_and_the_templates_end_of_turn_token(tokenizer):
    builder = PromptBuilder(tokenizer, extra_stop_ids=[tokenizer.eos_token_id, 7])
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert builder.end_of_turn_id() == im_end
    assert builder.stop_ids() == [tokenizer.eos_token_id, im_end, 7]


def test_end_of_turn_token_of_a_llama3_style_template():
    tokenizer = tiny_chat_tokenizer(LLAMA3)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    )
    builder = PromptBuilder(tokenizer)
    assert builder.end_of_turn_id() == tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert builder.text("Hi").startswith("<|bos|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>")


def test_without_a_chat_template_the_prompt_is_plain_text_after_bos():
    tokenizer = tiny_chat_tokenizer(chat_template=None)
    builder = PromptBuilder(tokenizer)
    assert not builder.uses_chat_template
    assert builder.text("What is 2+3?") == "What is 2+3?\n"
    assert builder.ids("What is 2+3?") == [tokenizer.bos_token_id, *tokenizer("What is 2+3?\n")["input_ids"]]
    assert builder.end_of_turn_id() is None
    assert builder.stop_ids() == [tokenizer.eos_token_id]
    shots = PromptBuilder(tokenizer, system_prompt="Solve.", few_shot=[("1+1?", "2")])
    assert shots.text("3+3?") == "Solve.\n\n1+1?\n2\n\n3+3?\n"


def test_a_template_that_rejects_a_role_is_a_user_error_naming_the_roles():
    builder = PromptBuilder(tiny_chat_tokenizer(NO_SYSTEM), system_prompt="Be brief.")
    with pytest.raises(UserError, match="roles system/user: System role not supported"):
        builder.text("Hi")


def test_think_delimiters_are_single_tokens_only_when_the_vocabulary_has_them():
    tokenizer = tiny_chat_tokenizer()
    assert PromptBuilder(tokenizer).settings()["think_single_tokens"] is False
    tokenizer.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    builder = PromptBuilder(tokenizer)
    assert builder.think_ids() == (
        [tokenizer.convert_tokens_to_ids("<think>")],
        [tokenizer.convert_tokens_to_ids("</think>")],
    )
    assert builder.settings()["think_single_tokens"] is True
    with pytest.raises(ConfigError, match="think_start"):
        PromptBuilder(tokenizer, think_start="")


def test_settings_record_what_shaped_the_prompt(tokenizer):
    settings = PromptBuilder(tokenizer, system_prompt="S", few_shot=[("q", "a")]).settings()
    assert settings["chat_template"] is True
    assert (settings["system_prompt"], settings["few_shot"], settings["template"]) == ("S", 1, "{question}")
    assert settings["stop_tokens"] == ["<|eos|>", "<|im_end|>"]


def test_few_shot_replies_end_in_the_form_the_answer_mode_reads():
    solved = Problem("Q1", ["<<2*3=6>>"], "6", meta={"solution": "Two threes are 6."})
    bare = Problem("Q2", ["<<1+1=2>>", "<<2+1=3>>"], "3")
    assert few_shot_pairs([solved, bare], "auto") == [
        ("Q1", "Two threes are 6.\nThe final answer is \\boxed{6}."),
        ("Q2", "<<1+1=2>> <<2+1=3>>\nThe final answer is \\boxed{3}."),
    ]
    assert few_shot_pairs([solved], "strict") == [("Q1", "Two threes are 6.\n#### 6")]
    assert few_shot_pairs([Problem("Q3", [], "7")], "flexible") == [("Q3", "The answer is 7.")]
