# ruff: noqa  (throwaway prototypes: evidence for proposed src changes, not project code)
"""Prototype (evidence for a proposed src change): preallocated contiguous KV cache in HFEngine.

Usage: .venv/bin/python bench/proto/kv_prealloc.py MODEL_DIR SPEC.json
(SPEC.json: mathrl.json from `bench/bench_grpo.py --spec-only DIR`.) Monkeypatches the
cache layers after prefill so decode writes K/V in place instead of torch.cat-ing the whole
cache every step; checks the tokens and log-probs are identical and times both.
"""

import json
import sys
import time
import types

import torch


def _update(self, k, v, *a, **kw):
    n = self._len
    self.kbuf[:, :, n : n + k.shape[-2]] = k
    self.vbuf[:, :, n : n + v.shape[-2]] = v
    self._len = n + k.shape[-2]
    self.keys, self.values = self.kbuf[:, :, : self._len], self.vbuf[:, :, : self._len]
    return self.keys, self.values


def _seq_len(self):
    return self._len


def _select(self, idx):
    self.kbuf, self.vbuf = self.kbuf[idx], self.vbuf[idx]
    self.keys, self.values = self.kbuf[:, :, : self._len], self.vbuf[:, :, : self._len]


def preallocate(cache, extra):
    for layer in cache.layers:
        B, H, L, D = layer.keys.shape
        kb = layer.keys.new_empty(B, H, L + extra, D)
        vb = torch.empty_like(kb)
        kb[:, :, :L] = layer.keys
        vb[:, :, :L] = layer.values
        layer.kbuf, layer.vbuf, layer._len = kb, vb, L
        layer.update = types.MethodType(_update, layer)
        layer.get_seq_length = types.MethodType(_seq_len, layer)
        layer.batch_select_indices = types.MethodType(_select, layer)


from mathrl.models.loading import load_model
from mathrl.rollout.hf_engine import HFEngine
from mathrl.rollout.types import SamplingParams

torch.set_num_threads(2)
spec = json.load(open(sys.argv[2]))
model, tok = load_model(sys.argv[1], dtype="float32", device="cpu")
prompts = [r["ids"] for r in spec["prompts"][:8]]
eng = HFEngine(model, tok, batch_size=64)
orig = HFEngine._decode


def patched(self, cache, logits, am, pos, sampling, gen):
    preallocate(cache, sampling.max_new_tokens)
    return orig(self, cache, logits, am, pos, sampling, gen)


def run(p):
    HFEngine._decode = patched if p else orig
    t = time.perf_counter()
    r = eng.generate(prompts, SamplingParams(n=8, max_new_tokens=128, ignore_eos=True, seed=0))
    return time.perf_counter() - t, r


a = run(False)
b = run(True)
print(
    "same tokens:",
    [c.token_ids for c in a[1].completions] == [c.token_ids for c in b[1].completions],
)
print(
    "max |dlogp|:",
    max(
        abs(x - y)
        for c, d in zip(a[1].completions, b[1].completions)
        for x, y in zip(c.logprobs, d.logprobs)
    ),
)
for i in range(3):
    print("dynamic %.2f  prealloc %.2f" % (run(False)[0], run(True)[0]), flush=True)
