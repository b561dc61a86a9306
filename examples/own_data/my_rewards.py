"""A reward function in TRL's form: it works unchanged in TRL's GRPOTrainer and in mathrl."""

import re

_BOXED = re.compile(r"\\boxed\{")


def one_box(completions, **kwargs):
    """1.0 when the answer is boxed exactly once (chat-form completions, as TRL passes them);
    None for an empty completion, which this function does not judge."""
    out = []
    for completion in completions:
        text = completion[0]["content"]
        out.append(None if not text.strip() else float(len(_BOXED.findall(text)) == 1))
    return out
