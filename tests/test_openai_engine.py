"""rollout.engine = "openai": rollouts from `mathrl serve` over HTTP equal the in-process ones.

A real uvicorn server on 127.0.0.1 serves the tiny scratch model; the trainer publishes its
weights to it after every step. Replies the engine cannot use are a table of cases.
"""

from __future__ import annotations

import math
import re
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from conftest import serve_in_thread  # noqa: E402
from mathrl.errors import MathrlError  # noqa: E402
from mathrl.io import read_jsonl  # noqa: E402
from mathrl.rollout.openai_engine import ServerError, parse_choices  # noqa: E402


@contextmanager
def serving(model_dir: Path, weights_root: Path, **kw):
    """mathrl serve on a free 127.0.0.1 port in a thread; yields (state, base URL)."""
    from mathrl.serve.launch import build_state

    sets = ["model.threads=2", "rollout.batch_size=16"]
    state = build_state(str(model_dir), None, sets, name="tiny", weights_root=weights_root, **kw)
    with serve_in_thread(state) as url:
        yield state, url


def test_grpo_through_mathrl_serve_equals_in_process(tmp_path, run_train, same_run):
    """3 GRPO steps: the same rollouts (token ids, rewards) and bitwise the same weights and
    Adam moments with the engine over HTTP as in-process; the server ends on the trainer's
    final weights (the digest it reports after its last load)."""
    from safetensors.torch import load_file

    from mathrl.models.identity import weights_digest
    from mathrl.models.loading import load_model

    steps = ("train.steps=3", "log.rollouts_every=1")
    local = run_train(tmp_path / "local", *steps)
    assert local.code == 0, local.err
    root = tmp_path / "root"
    root.mkdir()
    with serving(tmp_path / "local" / "scratch_model", root) as (state, url):
        remote = run_train(
            tmp_path / "remote",
            *steps,
            "rollout.engine=openai",
            f"rollout.server_url={url}",
            f"rollout.weights_dir={root / 'w'}",
        )
        assert remote.code == 0, remote.err
        same_run(tmp_path / "local", tmp_path / "remote", 3)
        # published before the first rollout and after each step; each load's digest was
        # checked by the engine, and the last is the trainer's final model
        assert state.weights["version"] == 4
        final = tmp_path / "remote" / "checkpoints" / "step_00000003" / "model"
        model = load_model(str(final), dtype="float32", device="cpu")[0]
        assert state.weights["digest"] == weights_digest(model)
        assert sorted(p.name for p in (root / "w").iterdir()) == ["v000004"]  # older removed
        assert load_file(root / "w" / "v000004" / "model.safetensors").keys()
    rows = read_jsonl(tmp_path / "remote" / "rollouts.jsonl")
    assert len(rows) == 3 * 2 * 4 and {r["step"] for r in rows} == {1, 2, 3}


def test_refuses_a_server_with_another_tokenizer(tmp_path, run_cli, tiny_config):
    """A model with another vocabulary: one line naming the tokenizer, before any training."""
    from mathrl.models.scratch import build_scratch_model

    other = build_scratch_model(
        tmp_path / "other",
        ["lorem ipsum dolor sit amet"] * 20,
        seed=0,
        hidden=32,
        layers=1,
        heads=2,
        vocab_size=300,
        max_position=256,
    )
    root = tmp_path / "root"
    root.mkdir()
    with serving(other, root) as (_, url):
        sets = ["rollout.engine=openai", f"rollout.server_url={url}"]
        r = run_cli(
            "train",
            "-c",
            tiny_config,
            "--out",
            tmp_path / "run",
            *sum((["--set", s] for s in sets), []),
        )
    assert r.code == 2
    assert r.err.strip().splitlines()[-1].startswith("error: ") and "another tokenizer" in r.err
    assert "Traceback" not in r.err


def test_a_dead_server_is_one_line(tmp_path, run_train):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    r = run_train(
        tmp_path / "run", "rollout.engine=openai", f"rollout.server_url=http://127.0.0.1:{port}"
    )
    assert r.code == 2 and "ConnectError" in r.err and "(after 5 tries)" in r.err
    assert len(r.err.strip().splitlines()) == 1  # before the warm-up: nothing else ran


GOOD = {
    "index": 0,
    "token_ids": [5, 2],
    "logprobs": {"token_logprobs": [-1.5, -0.25]},
    "finish_reason": "stop",
}


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("not a dict", "no choices"),
        ({"choices": []}, "0 choices for n = 1"),
        ({"choices": [GOOD, GOOD]}, "2 choices for n = 1"),
        ({"choices": ["x"]}, "not an object"),
        ({"choices": [{**GOOD, "index": 3}]}, "bad or repeated index"),
        ({"choices": [{**GOOD, "index": True}]}, "bad or repeated index"),
        (
            {"choices": [{k: v for k, v in GOOD.items() if k != "token_ids"}]},
            "did not return the sampled token ids",
        ),
        ({"choices": [{**GOOD, "logprobs": None}]}, "did not return the sampled token ids"),
        ({"choices": [{**GOOD, "token_ids": []}]}, "list of 1..4 ids"),
        ({"choices": [{**GOOD, "token_ids": list(range(5))}]}, "list of 1..4 ids"),
        ({"choices": [{**GOOD, "token_ids": [5, 300]}]}, "not an integer in [0, 300)"),
        ({"choices": [{**GOOD, "token_ids": [5, -1]}]}, "not an integer in [0, 300)"),
        ({"choices": [{**GOOD, "token_ids": [5, 2.0]}]}, "not an integer"),
        ({"choices": [{**GOOD, "token_ids": "52"}]}, "list of 1..4 ids"),
        ({"choices": [{**GOOD, "logprobs": {"token_logprobs": [-1.0]}}]}, "not as many log-probs"),
        (
            {"choices": [{**GOOD, "logprobs": {"token_logprobs": [-1.0, math.nan]}}]},
            "finite number",
        ),
        ({"choices": [{**GOOD, "logprobs": {"token_logprobs": [-1.0, 0.5]}}]}, "finite number"),
        ({"choices": [{**GOOD, "logprobs": {"token_logprobs": [-1.0, "x"]}}]}, "finite number"),
        ({"choices": [{**GOOD, "finish_reason": "tool_calls"}]}, "is not stop/length"),
    ],
)
def test_unusable_replies_are_refused(reply, message):
    with pytest.raises(
        ServerError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        parse_choices(reply, n=1, max_tokens=4, vocab=300, stop_ids={2})


def test_reply_parsing_orders_by_index_and_reads_finish():
    other = {
        **GOOD,
        "index": 1,
        "token_ids": [7, 8, 9],
        "finish_reason": "length",
        "logprobs": {"token_logprobs": [-0.5, 0.0, 1e-5]},
    }
    stopped_by_string = {
        **GOOD,
        "index": 2,
        "token_ids": [7],
        "logprobs": {"token_logprobs": [-2.0]},
    }
    got = parse_choices({"choices": [stopped_by_string, other, GOOD]}, 3, 4, 300, {2})
    assert got == [
        ([5, 2], [-1.5, -0.25], "eos"),  # "stop" at a stop token
        ([7, 8, 9], [-0.5, 0.0, 0.0], "length"),  # rounding above 0 is clamped to 0
        ([7], [-2.0], "length"),  # "stop" elsewhere (a stop string) is not an eos
    ]


def test_one_step_off_policy(tmp_path, run_train):
    """off_policy_steps = 1: step 2 trains on samples drawn from the weights before step 1
    (exactly what the in-process engine draws from them), staleness is logged, and the
    checkpoint's prompt cursor excludes the prefetched step (a resume samples it again)."""
    import torch

    from mathrl.checkpoint import latest_checkpoint
    from mathrl.groups import rollout_sampling, step_seed
    from mathrl.models.loading import load_model
    from mathrl.rollout.chat import prompt_token_ids
    from mathrl.rollout.hf_engine import HFEngine
    from mathrl.runs import load_run_config

    run = tmp_path / "run"
    root = tmp_path / "root"
    root.mkdir()
    first = run_train(tmp_path / "first", "train.steps=1")  # builds the same scratch model
    assert first.code == 0, first.err
    sets = ("train.steps=3", "log.rollouts_every=1", "rollout.off_policy_steps=1")
    with serving(tmp_path / "first" / "scratch_model", root) as (_, url):
        r = run_train(
            run,
            *sets,
            "rollout.engine=openai",
            f"rollout.server_url={url}",
            f"rollout.weights_dir={root / 'w'}",
        )
    assert r.code == 0, r.err
    metrics = [m for m in read_jsonl(run / "metrics.jsonl") if "rollout/staleness" in m]
    assert [m["rollout/staleness"] for m in metrics] == [0.0, 1.0, 1.0]
    # step 2's samples: the RL start model (after the warm-up) with step index 1's seeds
    start = latest_checkpoint(run / "warmup_sft") / "model"
    model, tok = load_model(str(start), dtype="float32", device="cpu")[:2]
    cfg = load_run_config(
        tmp_path / "tiny.toml", ["rollout.engine=openai", "rollout.server_url=http://x"]
    )
    rows = [x for x in read_jsonl(run / "rollouts.jsonl") if x["step"] == 2]
    prompts = [prompt_token_ids(tok, x["messages"]) for x in rows[:: cfg.train.group_size]]
    sampling = rollout_sampling(cfg, cfg.train.group_size, step_seed(cfg, 1))
    again = HFEngine(model, tok, batch_size=16).generate(prompts, sampling)
    assert [c.text for c in again.completions] == [x["completion"] for x in rows]
    ckpt = torch.load(run / "checkpoints" / "step_00000001" / "trainer_state.pt", weights_only=True)
    assert ckpt["train_state"]["cursor"] == 2  # step 1's two prompts, not the prefetched two


class Stub:
    """A scripted OpenAI-style server on 127.0.0.1: `script[path]` is a list of
    (status, body, headers) answered in turn (the last repeats); requests are recorded."""

    def __init__(self, script):
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.script, self.calls = script, []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, body_in):
                stub.calls.append((self.path, body_in))
                queue = stub.script[self.path]
                status, body, headers = queue.pop(0) if len(queue) > 1 else queue[0]
                if callable(body):
                    body = body(body_in)
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                self.answer(None)

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                self.answer(json.loads(self.rfile.read(n)))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def paths(self):
        return [p for p, _ in self.calls]

    def close(self):
        self.httpd.shutdown()


def one_choice(body):
    """A valid reply for any /v1/completions request: n choices of [5, <stop>]."""
    choice = {
        "token_ids": [5, 2],
        "logprobs": {"token_logprobs": [-1.0, -0.5]},
        "finish_reason": "stop",
    }
    return {"choices": [{**choice, "index": j} for j in range(body["n"])]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from mathrl.models.loading import load_model
    from mathrl.models.scratch import build_scratch_model

    texts = [f"Using the numbers {a} {b}, make {a * b}." for a in range(9) for b in range(9)]
    path = build_scratch_model(
        tmp_path_factory.mktemp("tiny") / "m",
        texts,
        seed=0,
        hidden=32,
        layers=1,
        heads=2,
        vocab_size=300,
        max_position=256,
    )
    return load_model(str(path), dtype="float32", device="cpu")[:2]


def test_transient_failures_are_retried_with_backoff(tiny):
    """503 and 429 with Retry-After are retried, then the reply arrives; a 400 is not retried
    and is one line with the server's message; a 500 that lasts and a non-JSON body too.
    (Connections refused: test_a_dead_server_is_one_line.)"""
    from mathrl.rollout.openai_engine import ServerClient

    stub = Stub(
        {
            "/v1/models": [
                (503, {"error": {"message": "warming up"}}, {}),
                (429, {"error": "slow down"}, {"Retry-After": "0.05"}),
                (200, {"data": [{"id": "m"}]}, {}),
            ],
            "/bad": [(400, {"error": {"message": "max_tokens is too large"}}, {})],
        }
    )
    try:
        client = ServerClient(stub.url, retries=3, backoff_s=0.01)
        assert client.first_model() == "m"
        assert stub.paths() == ["/v1/models"] * 3
        with pytest.raises(ServerError, match="HTTP 400: max_tokens is too large"):
            client.request("POST", "/bad", {})
        assert stub.paths().count("/bad") == 1
        stub.script["/v1/models"] = [(500, b"<html>oops</html>", {})]
        with pytest.raises(ServerError, match=r"HTTP 500: <html>oops</html> \(after 4 tries\)"):
            client.first_model()
        stub.script["/v1/models"] = [(200, b"{not json", {})]
        with pytest.raises(ServerError, match="not JSON"):
            client.first_model()
    finally:
        stub.close()


def test_vllm_lora_protocol(tiny, tmp_path):
    """weight_sync = vllm_lora: each publish loads a new adapter, requests name it, and the
    previous one is unloaded and its files removed; a full-weights model is refused."""
    from mathrl.models import lora
    from mathrl.rollout.openai_engine import OpenAIEngine
    from mathrl.rollout.types import SamplingParams

    model, tok = tiny
    probe_ids = lambda body: {"tokens": tok.encode(body["prompt"], add_special_tokens=False)}  # noqa: E731
    ok = (200, {}, {})
    stub = Stub(
        {
            "/v1/models": [(200, {"data": [{"id": "base"}]}, {})],
            "/health": [(200, {"status": "ok"}, {})],  # no fingerprint: vLLM's /tokenize probe
            "/tokenize": [(200, probe_ids, {})],
            "/v1/load_lora_adapter": [ok],
            "/v1/unload_lora_adapter": [ok],
            "/v1/completions": [(200, one_choice, {})],
        }
    )
    try:
        kw = dict(base_url=stub.url, weight_sync="vllm_lora", weights_dir=tmp_path / "w")
        with pytest.raises(MathrlError, match="needs LoRA training"):
            OpenAIEngine(model, tok, **kw)
        peft_model = lora.add_adapters(model, 2, 4.0, 0.0, ["q_proj"], "base")
        engine = OpenAIEngine(peft_model, tok, **kw)
        engine.generate([[5, 6]], SamplingParams(n=2, max_new_tokens=4, seed=1))
        engine.update_weights(peft_model)
        engine.generate([[5, 6]], SamplingParams(n=2, max_new_tokens=4, seed=1))
    finally:
        stub.close()
    posts = [(p, b) for p, b in stub.calls if b is not None]
    v1, v2 = f"mathrl-{engine.tag}-v1", f"mathrl-{engine.tag}-v2"
    assert [p for p, _ in posts] == [
        "/tokenize",
        "/v1/load_lora_adapter",
        "/v1/completions",
        "/v1/load_lora_adapter",
        "/v1/unload_lora_adapter",
        "/v1/completions",
    ]
    assert posts[1][1] == {"lora_name": v1, "lora_path": str(tmp_path / "w" / "v000001")}
    assert posts[2][1]["model"] == v1 and posts[5][1]["model"] == v2
    assert posts[4][1] == {"lora_name": v1}
    assert posts[2][1]["prompt"] == [5, 6] and posts[2][1]["seed"] == 1
    assert posts[2][1]["logprobs"] == 0 and posts[2][1]["return_token_ids"] is True
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["v000002"]
    assert (tmp_path / "w" / "v000002" / "adapter_config.json").is_file()


def test_the_http_engine_loads_no_in_process_engine():
    """No transformers, and none of the in-process engines' modules. torch does load:
    models.identity imports it at its top for weights_digest."""
    code = (
        "import sys, mathrl.rollout.openai_engine; print(sorted(m for m in sys.modules if m in "
        "{'transformers', 'mlx', 'mathrl.rollout.hf_engine', 'mathrl.rollout.sampler'}))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_adapter_names_differ_between_processes(tiny, tmp_path):
    """A resumed run (another process, another engine) never reuses an adapter name that
    the server may still hold: each engine's names carry its own random tag."""
    from mathrl.models import lora
    from mathrl.rollout.openai_engine import OpenAIEngine

    model, tok = tiny
    peft_model = lora.add_adapters(model, 2, 4.0, 0.0, ["q_proj"], "base")
    stub = Stub({"/v1/load_lora_adapter": [(200, {}, {})]})
    try:
        kw = dict(served_model="base", weight_sync="vllm_lora", check_tokenizer=False)
        for run in ("first", "resumed"):
            OpenAIEngine(peft_model, tok, stub.url, weights_dir=tmp_path / run, **kw)
    finally:
        stub.close()
    names = [b["lora_name"] for p, b in stub.calls if p == "/v1/load_lora_adapter"]
    assert len(names) == 2 and names[0] != names[1]
    assert all(re.fullmatch(r"mathrl-[0-9a-f]{8}-v1", n) for n in names)


@pytest.mark.parametrize(
    ("reply", "kind"), [([1, 2], "an array"), ("ok", "a string"), (None, "null"), (3, "a number")]
)
def test_a_reply_that_is_not_an_object_is_one_line(tiny, tmp_path, reply, kind):
    from mathrl.rollout.openai_engine import OpenAIEngine

    model, tok = tiny
    stub = Stub({"/v1/load_weights": [(200, reply, {})]})
    try:
        with pytest.raises(ServerError) as err:
            OpenAIEngine(model, tok, stub.url, "m", weights_dir=tmp_path, check_tokenizer=False)
    finally:
        stub.close()
    assert str(err.value) == f"{stub.url}/v1/load_weights replied with {kind}, not a JSON object"


def test_a_failed_request_does_not_wait_for_the_others(tiny):
    """One prompt's request is refused at once while the others hang for 5 s: the rollout
    call fails within a second instead of waiting for every request in flight."""
    import json
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from mathrl.rollout.openai_engine import OpenAIEngine
    from mathrl.rollout.types import SamplingParams

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bad = body["prompt"] == [5]
            if not bad:
                time.sleep(5)
            raw = json.dumps({"error": {"message": "no"}} if bad else one_choice(body)).encode()
            self.send_response(400 if bad else 200)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    model, tok = tiny
    try:
        engine = OpenAIEngine(model, tok, url, "m", weight_sync="none", check_tokenizer=False)
        started = time.monotonic()
        with pytest.raises(ServerError, match="HTTP 400: no"):
            engine.generate([[6], [5], [7], [8]], SamplingParams(n=1, max_new_tokens=2, seed=0))
        assert time.monotonic() - started < 2.0
    finally:
        httpd.shutdown()
