"""TRL side of bench/bench_grpo.py: GRPOTrainer driven one optimizer step at a time.

Usage (by the orchestrator, in bench/.venv-trl): python bench/grpo_trl_worker.py SPEC.json

SPEC.json: {"model_dir", "prompts": [{"messages", "ids"}, ...] in step order, "warmup",
"steps", "threads", "seed", "trl": {GRPOConfig overrides}}. Settings are matched to
mathrl's run by the orchestrator (fp32, no gradient checkpointing, loss_type "dapo" =
mathrl's token-mean, no shuffling, constant lr, plain torch AdamW, min_new_tokens =
max_completion_length so every completion has full length).

TRL's timers only reach W&B-style trackers, so the split is read by wrapping its methods:
rollout = `_generate` (tokenize + model.generate + decode), reward = `_calculate_rewards`,
train = the rest of the optimizer step (ref log-probs, loss, backward, optimizer).
Step time is wall time from on_step_begin (after `go`) to on_step_end.
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

from grpo_common import peak_rss_mb, rss_mb, send, text_reward, trim_memory, wait_for_go


def reward_fn(completions: list[Any], **_: Any) -> list[float]:
    """The shared bench reward on the completion text (conversational or plain)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [text_reward(t) for t in texts]


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    t_start = time.perf_counter()
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    if tokenizer.pad_token is None:  # as mathrl's prepare_tokenizer
        tokenizer.pad_token = tokenizer.eos_token
    total = spec["warmup"] + spec["steps"]
    rows = spec["prompts"]
    dataset = Dataset.from_list([{"prompt": r["messages"]} for r in rows])
    t = spec["trl"]
    out_dir = tempfile.mkdtemp(prefix="bench-trl-")
    args = GRPOConfig(
        output_dir=out_dir,
        max_steps=total,
        seed=spec["seed"],
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **t,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_fn,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )

    timers = {"rollout_s": 0.0, "reward_s": 0.0, "generate_s": 0.0}
    checks: list[bool] = []
    counts = {"completion_tokens": 0}
    group = t["num_generations"]
    per_step = t["per_device_train_batch_size"] * t["gradient_accumulation_steps"] // group

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                timers[name] += time.perf_counter() - t0

        return wrapper

    single_turn = trainer._generate_single_turn

    def checked_single_turn(prompt_ids: list[list[int]], *a: Any, **kw: Any) -> Any:
        k = len(checks)
        unique = [list(p) for p in prompt_ids[::group]]
        checks.append(unique == [r["ids"] for r in rows[k * per_step : (k + 1) * per_step]])
        completion_ids, logprobs = single_turn(prompt_ids, *a, **kw)
        counts["completion_tokens"] += sum(len(c) for c in completion_ids)
        return completion_ids, logprobs

    trainer._generate_single_turn = timed("generate_s", checked_single_turn)
    trainer._generate = timed("rollout_s", trainer._generate)
    trainer._calculate_rewards = timed("reward_s", trainer._calculate_rewards)

    info = {
        "framework": "trl",
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        "load_s": time.perf_counter() - t_start,
        "args": {
            k: getattr(args, k)
            for k in (
                "bf16",
                "fp16",
                "gradient_checkpointing",
                "loss_type",
                "shuffle_dataset",
                "beta",
                "optim",
                "lr_scheduler_type",
                "learning_rate",
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "steps_per_generation",
                "generation_batch_size",
                "num_generations",
                "max_completion_length",
                "scale_rewards",
                "epsilon",
                "max_grad_norm",
                "num_iterations",
                "top_k",
                "top_p",
                "temperature",
            )
        },
    }
    info["args"]["optim"] = str(info["args"]["optim"])
    info["args"]["lr_scheduler_type"] = str(info["args"]["lr_scheduler_type"])

    class LockStep(TrainerCallback):
        """Waits for `go` before each optimizer step and reports after it."""

        def __init__(self) -> None:
            self.t0 = 0.0
            self.first = True

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.first:
                send({"ready": True, **info})
                self.first = False
            if not wait_for_go():
                os._exit(0)
            for k in timers:
                timers[k] = 0.0
            counts["completion_tokens"] = 0
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            wall = time.perf_counter() - self.t0
            send(
                {
                    "step": state.global_step,
                    "wall_s": wall,
                    "step_s": wall,
                    "rollout_s": timers["rollout_s"],
                    "generate_s": timers["generate_s"],
                    "reward_s": timers["reward_s"],
                    "train_s": wall - timers["rollout_s"] - timers["reward_s"],
                    "completion_tokens": counts["completion_tokens"],
                    "prompts_ok": checks[-1] if checks else False,
                    "rss_mb": peak_rss_mb(),
                    "rss_now_mb": rss_mb(),
                }
            )
            if spec.get("trim"):
                trim_memory()

    trainer.add_callback(LockStep())
    trainer.train()
    send({"done": True, "peak_rss_mb": peak_rss_mb(), **info})


if __name__ == "__main__":
    main()
