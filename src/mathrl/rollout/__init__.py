"""Sampling engines.

types.py: SamplingParams, Completion, GenerationResult, and RolloutEngine, the base whose
  generate() (seeds, chunks by length, the stop-text rule, the caller's order) every
  engine shares; an engine implements the per-chunk decode.
stops.py: stop token ids and the stop rule of a decode; seeds.py: prompt seeds and chunks.
  Both plain Python: no framework loads with the base.
hf_engine.py: HFEngine, our KV-cached decode loop on a transformers model.
lean_decode.py: LeanDecoder, the decode step HFEngine uses for Llama/Qwen2 models;
  model_step.py: ModelStep, transformers' forward as a step for the rest; static_decode.py:
  StaticDecoder, the fixed-shape step rollout.compile compiles.
mlx_engine.py: MLXEngine, the same on an mlx-lm model; openai_engine.py: a remote server.
sampler.py: the next token (greedy / temperature / top-k / top-p) and its log-prob.
registry.py: ENGINES and make_engine(name, model, tokenizer).
"""
