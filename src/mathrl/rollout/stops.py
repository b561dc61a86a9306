"""When a completion stops: the stop token ids of a model, and the per-row record of a
decode that applies the stop rule. Plain Python (the model and tokenizer duck-typed), so
every engine, the HTTP one included, gets them without torch or transformers.

The stop rule: a row ends ("eos") at the first stop token it draws, that token kept in its
ids (training learns to stop), the very last allowed token included; with ignore_eos no row
ends early. A row that never draws one ends at max_new_tokens ("length").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mathrl.errors import MathrlError

Row = tuple[list[int], list[float], str]
"""One decoded row: token ids, their log-probs, finish reason ("eos" or "length")."""


def stop_ids(tokenizer: Any, eos: int | list[int] | None) -> list[int]:
    """Tokenizer eos + the generation config's `eos` id(s) + <|im_end|> if the vocab has it."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if eos is not None:
        ids.update(int(i) for i in ([eos] if isinstance(eos, int) else eos))
    # Chat models end a turn with <|im_end|> even when their eos is <|endoftext|>.
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    if not ids:
        raise MathrlError("no stop token: the tokenizer and generation config have no eos id")
    return sorted(ids)


def default_stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """stop_ids with the eos of `model.generation_config` (a transformers model's)."""
    gen_cfg = getattr(model, "generation_config", None)
    return stop_ids(tokenizer, getattr(gen_cfg, "eos_token_id", None))


def saved_eos(model: Any) -> int | list[int] | None:
    """eos_token_id of the generation_config.json a model was loaded with (None: none):
    the text the MLX loader keeps (`mathrl_generation_config`), else the file beside the
    model (`name_or_path`)."""
    text = getattr(model, "mathrl_generation_config", None)  # read when the model loaded
    if text is None:
        path = Path(getattr(model, "name_or_path", "") or "") / "generation_config.json"
        if not path.is_file():
            return None
        text = path.read_text("utf-8")
    eos: int | list[int] | None = json.loads(text).get("eos_token_id")
    return eos


class DecodeRows:
    """What one chunk's decode produced per row, filled one step at a time by the stop rule.

    Rows are numbered as the chunk's batch (row p*n + j: sample j of prompt p); a decode
    loop that drops finished rows passes, each step, the original row of each token.
    """

    def __init__(self, batch: int, stop_token_ids: list[int], ignore_eos: bool) -> None:
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.logprobs: list[list[float]] = [[] for _ in range(batch)]
        self.finish = ["length"] * batch
        self.stop_ids = frozenset(stop_token_ids)
        self.ignore_eos = ignore_eos

    def add(self, rows: list[int], tokens: list[int], logprobs: list[float]) -> list[int]:
        """Append token i and its log-prob to row rows[i]; returns the i that drew a stop
        token (those rows are now finished "eos"; none under ignore_eos)."""
        done = []
        for i, (row, t, lp) in enumerate(zip(rows, tokens, logprobs, strict=True)):
            self.tokens[row].append(t)
            self.logprobs[row].append(lp)
            if t in self.stop_ids and not self.ignore_eos:
                self.finish[row] = "eos"
                done.append(i)
        return done

    def add_block(self, tokens: list[list[int]], logprobs: list[list[float]]) -> None:
        """Rows decoded as one block (row r's tokens of every step, past its stop too):
        each row keeps its tokens up to and including its first stop token, as add would."""
        for row, (toks, lps) in enumerate(zip(tokens, logprobs, strict=True)):
            end = len(toks)
            if not self.ignore_eos:
                end = next((i + 1 for i, t in enumerate(toks) if t in self.stop_ids), end)
                if end and toks[end - 1] in self.stop_ids:
                    self.finish[row] = "eos"
            self.tokens[row] += toks[:end]
            self.logprobs[row] += lps[:end]

    def rows(self) -> list[Row]:
        """(token ids, log-probs, finish) of every row, in row order."""
        return list(zip(self.tokens, self.logprobs, self.finish, strict=True))
