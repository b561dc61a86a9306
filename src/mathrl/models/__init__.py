"""Model loading (HF, GGUF, named offline models), scratch models and sequence log-probs."""
