"""bench/gpu_check.sh runs on a CPU (`DEVICE=cpu QUICK=1`), so the GPU check cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_on_a_cpu(tmp_path):
    env = dict(
        os.environ,
        DEVICE="cpu",
        QUICK="1",
        OUT=str(tmp_path / "out"),
        RUNS=str(tmp_path / "runs"),
        PYTHON=sys.executable,
        BUDGET_S="900",
    )
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checks = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["checks"]
    expected = {
        "env",
        "decode_qwen2_0.5b_shape",
        "memory_gradient_checkpointing",
        "grpo_step_split",
        "correct_fp32",
        "correct_bf16_autocast",
    }
    assert expected <= checks.keys()
    failed = {k: v.get("error") for k, v in checks.items() if v.get("status") != "PASS"}
    assert not failed
    decode = checks["decode_qwen2_0.5b_shape"]
    for batch in ("batch8", "batch16"):
        assert decode[batch]["greedy_equal"] == {"lean": True, "static": True}
        assert decode[batch]["static_tok_s"] > 0 and decode[batch]["generate_tok_s"] > 0
    assert checks["grpo_step_split"]["rollout_s_median"] is not None
