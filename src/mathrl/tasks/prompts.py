"""Prompt text per style: what the prompt asks for, and how a correct answer is written.

The styles themselves are mathrl.rewards.PROMPT_STYLES (with where each puts the
answer); every style there has its text here, which tests/test_tasks.py checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from mathrl.errors import ConfigError
from mathrl.rewards import PROMPT_STYLES


@dataclass(frozen=True)
class PromptText:
    """The words of one prompt style."""

    system: str | None
    """Default system prompt; None sends no system message."""
    answer: str
    """A correct response, with {reasoning} and {answer} filled in."""
    user_suffix: str = ""
    """Appended to the question."""


PROMPT_TEXT: dict[str, PromptText] = {
    "final_line": PromptText(
        system=(
            "Solve the problem step by step. End your answer with a last line of the form "
            "'Final: <answer>'."
        ),
        answer="{reasoning}\nFinal: {answer}",
    ),
    # The seeds' GSM8K prompt: no system message, the instruction follows the question.
    "hash": PromptText(
        system=None,
        answer="{reasoning}\n#### {answer}",
        user_suffix='\nLet\'s think step by step and output the final answer after "####".',
    ),
    "boxed": PromptText(
        system="Solve the problem step by step and put your final answer within \\boxed{}.",
        answer="{reasoning}\nThe answer is \\boxed{{{answer}}}.",
    ),
    "think_answer": PromptText(
        system=(
            "First think about the problem inside <think> </think> tags, then give only the "
            "final answer inside <answer> </answer> tags."
        ),
        answer="<think>{reasoning}</think><answer>{answer}</answer>",
    ),
}


def prompt_text(style: str) -> PromptText:
    """The text of a registered prompt style (ConfigError for an unknown one)."""
    PROMPT_STYLES.get(style)  # an unknown name fails here, suggesting the closest
    if style not in PROMPT_TEXT:
        raise ConfigError(f"prompt style '{style}' has no prompt text in mathrl.tasks.prompts")
    return PROMPT_TEXT[style]


def build_messages(
    question: str, style: str, system_prompt: str | None = None
) -> list[dict[str, str]]:
    """Chat messages for a question in a prompt style."""
    text = prompt_text(style)
    system = system_prompt if system_prompt is not None else text.system
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question + text.user_suffix})
    return messages


def format_answer(reasoning: str, answer: str, style: str) -> str:
    """A response in the style's format: reasoning followed by the final answer."""
    filled = prompt_text(style).answer.format(reasoning=reasoning.strip(), answer=answer)
    # with no reasoning the answer starts the response (not an empty first line)
    return filled.lstrip("\n")
