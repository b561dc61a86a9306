"""Prompt styles: what the system prompt asks for, and how a correct answer is written."""

from __future__ import annotations

STYLES = ("final_line", "hash", "boxed", "think_answer")

SYSTEM_PROMPTS: dict[str, str | None] = {
    "final_line": (
        "Solve the problem step by step. End your answer with a last line of the form "
        "'Final: <answer>'."
    ),
    # The seeds' GSM8K prompt: no system message, the instruction follows the question.
    "hash": None,
    "boxed": "Solve the problem step by step and put your final answer within \\boxed{}.",
    "think_answer": (
        "First think about the problem inside <think> </think> tags, then give only the final "
        "answer inside <answer> </answer> tags."
    ),
}

USER_SUFFIX: dict[str, str] = {
    "hash": '\nLet\'s think step by step and output the final answer after "####".',
}


def build_messages(
    question: str, style: str, system_prompt: str | None = None
) -> list[dict[str, str]]:
    """Chat messages for a question in a prompt style."""
    system = system_prompt if system_prompt is not None else SYSTEM_PROMPTS[style]
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question + USER_SUFFIX.get(style, "")})
    return messages


def format_answer(reasoning: str, answer: str, style: str) -> str:
    """A response in the style's format: reasoning followed by the final answer."""
    reasoning = reasoning.strip()
    if style == "final_line":
        return f"{reasoning}\nFinal: {answer}".lstrip("\n")
    if style == "hash":
        return f"{reasoning}\n#### {answer}".lstrip("\n")
    if style == "boxed":
        return f"{reasoning}\nThe answer is \\boxed{{{answer}}}.".lstrip("\n")
    if style == "think_answer":
        return f"<think>{reasoning}</think><answer>{answer}</answer>"
    raise ValueError(f"unknown prompt style {style!r}")
