"""mathrl: RL post-training of language models on verifiable math.

`mathrl.train(config, out)` and `mathrl.evaluate(model, config)` (mathrl.api) are the CLI's
train and eval as functions; they load lazily so that `import mathrl` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from mathrl import mlx_blas

mlx_blas.install()  # MLX's GEMMs on a system OpenBLAS on Linux, if one is found

__version__ = "0.1.0"
__all__ = ["__version__", "evaluate", "train"]


def __getattr__(name: str) -> Any:
    # The API sits on top of every layer; importing it here eagerly would make each
    # `from mathrl.x import y` pull in torch and the loops.
    if name in ("train", "evaluate"):
        return getattr(importlib.import_module("mathrl.api"), name)
    raise AttributeError(f"module 'mathrl' has no attribute {name!r}")
