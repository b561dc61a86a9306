"""Sampling engines.

types.py: SamplingParams, Completion, GenerationResult, RolloutEngine (the interface).
hf_engine.py: HFEngine, our KV-cached decode loop on a transformers model.
lean_decode.py: LeanDecoder, the decode step HFEngine uses for Llama/Qwen2 models.
sampler.py: the next token (greedy / temperature / top-k / top-p) and its log-prob.
registry.py: ENGINES and make_engine(name, model, tokenizer).
"""
