"""mathrl: RL post-training of language models on verifiable math."""

__version__ = "0.1.0"
