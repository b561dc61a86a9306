"""mathrl side of bench/bench_grpo.py: `mathrl.trainer.train` driven one step at a time.

Usage (by the orchestrator, in mathrl's .venv): python bench/grpo_mathrl_worker.py SPEC.json
Standalone (no orchestrator, e.g. under py-spy or cProfile): add --standalone.

SPEC.json: {"config": toml, "sets": [...], "prompts": [{"id", "question", "gold",
"messages", "ids"}, ...] in step order, "warmup": int, "steps": int}. The trainer's own
PromptStream picks the prompts; the task below is laid out so that it picks them in the
given order, the same order TRL gets. Step time is wall time from `go` to the on_step
callback (it includes mathrl's per-step JSONL logging); the final checkpoint is skipped.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpo_common import (
    children_pids,
    peak_rss_mb,
    pss_mb,
    rss_mb,
    send,
    text_reward,
    trim_memory,
    wait_for_go,
)

STANDALONE = "--standalone" in sys.argv


class StopBench(Exception):
    """Raised from on_step after the last measured step: skips the final checkpoint."""


def bench_reward(text: str) -> Any:
    """mathrl reward call: the shared text reward as a RewardResult (runs in the reward pool)."""
    from mathrl.rewards.scoring import RewardResult

    r = text_reward(text)
    return RewardResult(r, {"bench": r}, None, False, False, True, "bench")


class BenchTask:
    """A fixed list of GSM8K prompts, laid out so PromptStream takes them in list order."""

    name = "gsm8k"
    fingerprint = "bench"

    def __init__(self, rows: list[dict[str, Any]], seed: int) -> None:
        from mathrl.data import PromptStream, StreamPosition
        from mathrl.tasks import Example

        ordered = [
            Example(r["id"], r["question"], r["gold"], meta={"messages": r["messages"]})
            for r in rows
        ]
        order = PromptStream(ordered, seed, StreamPosition())._order(0)
        slots: list[Any] = [None] * len(ordered)
        for k, idx in enumerate(order):
            slots[idx] = ordered[k]  # stream's k-th take is slots[order[k]] = ordered[k]
        self._train = slots

    def examples(self, split: str) -> list[Any]:
        return self._train

    def messages(self, ex: Any) -> list[dict[str, str]]:
        return ex.meta["messages"]

    def response(self, ex: Any, rng: Any = None) -> str:
        return ""

    def reward_call(self, ex: Any) -> tuple[Any, tuple[Any, ...]]:
        return bench_reward, ()


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    t_start = time.perf_counter()
    import torch

    from mathrl.config import load_config
    from mathrl.loggers import JSONLLogger
    from mathrl.models.loading import load_model
    from mathrl.rollout.hf_engine import HFEngine
    from mathrl.run_setup import quiet_libraries, set_seed, set_threads
    from mathrl.trainer import train

    cfg = load_config(spec["config"], spec["sets"], env=False)
    total = spec["warmup"] + spec["steps"]
    assert cfg.train.steps == total, (cfg.train.steps, total)
    quiet_libraries()
    set_threads(cfg.model.threads)
    set_seed(cfg.seed)
    model, tokenizer = load_model(
        cfg.model.path, dtype=cfg.model.dtype, device=cfg.model.device, autocast=cfg.model.autocast
    )
    task = BenchTask(spec["prompts"], cfg.seed)

    # Check that the engine is given exactly the token ids TRL gets (the same prompts, in order).
    expected = [r["ids"] for r in spec["prompts"]]
    per_step = cfg.train.prompts_per_step
    checks: list[bool] = []
    original_generate = HFEngine.generate

    def checked_generate(
        self: Any, prompts: list[list[int]], sampling: Any, **kwargs: Any
    ) -> Any:  # kwargs: the engine's own (seeds, ...), passed through
        k = len(checks)
        checks.append(prompts == expected[k * per_step : (k + 1) * per_step])
        return original_generate(self, prompts, sampling, **kwargs)

    HFEngine.generate = checked_generate  # type: ignore[method-assign]

    info = {
        "framework": "mathrl",
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "load_s": time.perf_counter() - t_start,
    }
    if not STANDALONE:
        send({"ready": True, **info})
        if not wait_for_go():
            return
    clock = {"go": time.perf_counter()}
    extra: dict[str, Any] = {}

    def on_step(step: int, metrics: dict[str, Any]) -> None:
        wall = time.perf_counter() - clock["go"]
        keys = ("time/step_s", "time/rollout_s", "time/reward_s", "time/train_s")
        report = {
            "step": step,
            "wall_s": wall,
            **{k.split("/")[1]: metrics[k] for k in keys},
            "completion_tokens": round(
                metrics["perf/rollout_tokens_per_s"] * metrics["time/rollout_s"]
            ),
            "trained_seqs": metrics.get("train/trained_seqs"),
            "prompts_ok": checks[-1] if checks else False,
            "rss_mb": peak_rss_mb(),
            "rss_now_mb": rss_mb(),
        }
        if step == total:
            workers = children_pids(os.getpid())
            extra["reward_workers"] = [
                {"pid": p, "peak_rss_mb": peak_rss_mb(str(p)), "pss_mb": pss_mb(p)} for p in workers
            ]
        if STANDALONE:
            print(json.dumps(report), file=sys.stderr)
        else:
            send(report)
        if spec.get("trim") and step < total:
            trim_memory()
        if step == total or (not STANDALONE and not wait_for_go()):
            raise StopBench
        clock["go"] = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bench-mathrl-") as tmp:
        run_dir = Path(tmp)
        try:
            train(
                cfg,
                task,
                model,
                tokenizer,
                run_dir,
                JSONLLogger(run_dir / "metrics.jsonl"),
                on_step=on_step,
            )
        except StopBench:
            pass
    done = {"done": True, "peak_rss_mb": peak_rss_mb(), **info, **extra}
    if STANDALONE:
        print(json.dumps(done), file=sys.stderr)
    else:
        send(done)


if __name__ == "__main__":
    main()
