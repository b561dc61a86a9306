"""One GRPO step on MLX (backend = "mlx") against torch, same machine, same workload.

Usage: .venv/bin/python bench/bench_mlx.py [--steps 5] [--warmup 1] [--model tiny|smollm2]

Workload: BENCHMARKS.md's tiny one (bench/configs/grpo.toml): 8 GSM8K prompts x 8
completions x 128 tokens (EOS ignored, so fixed length), fp32, lr 1e-5, one optimizer step
per rollout batch, the from-scratch Qwen2-style model (hidden 256, 4 layers, vocab 2048)
that bench_grpo.py builds. GSM8K comes from MATHRL_GSM8K;
the reward is bench/grpo_common.text_reward (a random-init model never answers correctly).

Both backends live in this process, loaded from the same HF dir, and run in lock step:
one step of one, then one of the other (order alternating), so load from other users of
the machine hits both alike. Each step: rollout (engine.generate), reward, advantages,
train_step (the loop's own functions, over mathrl.backends.backend_for). Reported: medians of the
measured steps for the step, its rollout and train parts, prefill/decode split, rollout
tokens/s, and MLX/torch ratios. Writes bench/results/mlx-<stamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_grpo import CONFIG, model_dir  # noqa: E402
from grpo_common import text_reward  # noqa: E402


def gsm8k_dir() -> str:
    found = os.environ.get("MATHRL_GSM8K", "")
    if not Path(found, "train.jsonl").is_file():
        sys.exit("GSM8K not found: set MATHRL_GSM8K to a dir with train.jsonl and test.jsonl")
    return found


class Side:
    """One backend's model, engine and optimizer, stepping on the shared prompts."""

    def __init__(self, backend: str, path: Path, data: str) -> None:
        from mathrl.backends import backend_for
        from mathrl.config import load_config
        from mathrl.groups import rollout_engine
        from mathrl.rl import optimizer_state

        self.cfg = load_config(
            CONFIG, [f"backend={backend}", f"model.path={path}", f"data.path={data}"], env=False
        )
        if backend == "mlx":
            from mathrl.models.mlx_model import load_mlx_model

            self.model, self.tokenizer = load_mlx_model(str(path))
        else:
            from mathrl.models.loading import load_model

            self.model, self.tokenizer = load_model(str(path), dtype="float32", device="cpu")
        self.backend = backend_for(self.cfg)
        self.engine = rollout_engine(self.cfg, self.model, self.tokenizer)
        self.optimizer, self.scheduler, self.state, _ = optimizer_state(
            self.cfg, self.backend, self.model, None
        )

    def step(self, prompts: list[list[int]], seed: int) -> dict[str, float]:
        import torch

        from mathrl.groups import Group, rollout_sampling
        from mathrl.rewards import RewardResult
        from mathrl.rl import advantages_for, train_step
        from mathrl.tasks import Example

        t = self.cfg.train
        t0 = time.perf_counter()
        self.model.eval()
        result = self.engine.generate(prompts, rollout_sampling(self.cfg, t.group_size, seed))
        t1 = time.perf_counter()
        groups = []
        for i, p in enumerate(prompts):
            comps = result.completions[i * t.group_size : (i + 1) * t.group_size]
            scores = [RewardResult(reward=text_reward(c.text)) for c in comps]
            groups.append(Group(Example(str(i), "", "0"), p, comps, scores))
        rewards = torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float32)
        advantages = advantages_for(self.cfg, self.state, rewards)
        self.model.train()
        pad = self.tokenizer.pad_token_id or 0
        train_step(
            self.cfg,
            self.model,
            None,
            self.optimizer,
            groups,
            advantages,
            pad,
            backend=self.backend,
        )
        t2 = time.perf_counter()
        return {
            "step_s": t2 - t0,
            "rollout_s": t1 - t0,
            "train_s": t2 - t1,
            "prefill_s": result.timing.get("prefill_s", float("nan")),
            "decode_s": result.timing.get("decode_s", float("nan")),
            "tokens_per_s": result.tokens_generated / (t1 - t0),
        }


def gemm_gflops(n: int, reps: int = 5) -> dict[str, float]:
    """fp32 n x n GEMM GFLOP/s of mlx and torch on these cores (after one warm-up product)."""
    import mlx.core as mx
    import torch

    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    mx.eval(a @ b)
    t0 = time.perf_counter()
    for _ in range(reps):
        mx.eval(a @ b)
    mlx_s = (time.perf_counter() - t0) / reps
    ta, tb = torch.randn(n, n), torch.randn(n, n)
    ta @ tb
    t0 = time.perf_counter()
    for _ in range(reps):
        ta @ tb
    torch_s = (time.perf_counter() - t0) / reps
    return {"mlx": 2 * n**3 / mlx_s / 1e9, "torch": 2 * n**3 / torch_s / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="measured steps per backend")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured steps first")
    ap.add_argument("--model", default="tiny", choices=("tiny", "smollm2"))
    args = ap.parse_args()
    import torch

    from mathrl import mlx_blas  # `import mathrl` first: mlx then binds to a system OpenBLAS

    torch.set_num_threads(2)
    gemm = {n: gemm_gflops(n) for n in (256, 1024)}
    blas = mlx_blas.load()
    print(
        f"mlx's BLAS: {blas or 'the bundled reference one'} ({mlx_blas.ENV}={os.environ.get(mlx_blas.ENV, '')!r})"
    )
    for n, g in gemm.items():
        print(f"fp32 GEMM {n}^3: mlx {g['mlx']:.1f} GFLOP/s, torch {g['torch']:.1f} GFLOP/s")
    data = gsm8k_dir()
    from mathrl.config import load_config
    from mathrl.data import make_task
    from mathrl.rollout.chat import prompt_token_ids

    task = make_task(load_config(CONFIG, [f"data.path={data}"], env=False))
    path = model_dir(args.model, task)
    sides = {b: Side(b, path, data) for b in ("torch", "mlx")}
    tok = sides["torch"].tokenizer
    examples = task.examples("train")
    rows: dict[str, list[dict[str, float]]] = {b: [] for b in sides}
    for k in range(args.warmup + args.steps):
        chunk = examples[(8 * k) % len(examples) :][:8]
        prompts = [prompt_token_ids(tok, task.messages(ex)) for ex in chunk]
        order = ("torch", "mlx") if k % 2 == 0 else ("mlx", "torch")
        for b in order:
            out = sides[b].step(prompts, seed=k)
            if k >= args.warmup:
                rows[b].append(out)
                print(b, k, {key: round(v, 3) for key, v in out.items()}, flush=True)
    med = {
        b: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for b, rs in rows.items()
    }
    ratio = {key: med["mlx"][key] / med["torch"][key] for key in med["torch"]}
    print(f"\nmedians of {args.steps} steps ({args.model}, 8 x 8 x 128, fp32):")
    print(f"{'':14}{'torch':>10}{'mlx':>10}{'mlx/torch':>11}")
    for key in med["torch"]:
        print(f"{key:14}{med['torch'][key]:10.3f}{med['mlx'][key]:10.3f}{ratio[key]:11.2f}")
    import mlx.core as mx

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = BENCH / "results" / f"mlx-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    info = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "mlx": mx.__version__,
        "mlx_blas": blas,
        "gemm_gflops": gemm,
    }
    out.write_text(
        json.dumps({"info": info, "medians": med, "ratio": ratio, "rows": rows}, indent=1)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
