"""`mathrl serve`: an OpenAI-compatible server on the rollout engine, tested on 127.0.0.1.

One real uvicorn server (a thread, a free port, an API key) answers the official `openai`
client; load_weights cases run on FastAPI's in-process TestClient. Models are tiny scratch
models built here (nothing downloaded).
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

import mathrl.cli.serve  # noqa: E402,F401  registers `mathrl serve` on the CLI app
from conftest import serve_in_thread  # noqa: E402
from mathrl.models.loading import load_model  # noqa: E402
from mathrl.models.scratch import build_scratch_model  # noqa: E402
from mathrl.rollout.sampler import prompt_seed  # noqa: E402
from mathrl.rollout.types import SamplingParams  # noqa: E402
from mathrl.serve.app import create_app  # noqa: E402
from mathrl.serve.launch import build_state  # noqa: E402

KEY = "test-key-0123"
TEXTS = [f"Using the numbers {a} {b} {a + b}, make {a * b}." for a in range(9) for b in range(9)]
OTHER_TEXTS = ["lorem ipsum dolor sit amet, consectetur adipiscing elit"] * 20
TINY = dict(hidden=32, layers=1, heads=2, vocab_size=300, max_position=256)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """root/a, root/b (same tokenizer, other weights), root/other_tok, elsewhere/c, and
    two ways out of root: a symlinked dir and a model dir whose weights file links out."""
    base = tmp_path_factory.mktemp("serve")
    root, elsewhere = base / "root", base / "elsewhere"
    paths = {
        "a": build_scratch_model(root / "a", TEXTS, seed=0, **TINY),
        "b": build_scratch_model(root / "b", TEXTS, seed=1, **TINY),
        "other_tok": build_scratch_model(root / "other_tok", OTHER_TEXTS, seed=0, **TINY),
        "c": build_scratch_model(elsewhere / "c", TEXTS, seed=2, **TINY),
    }
    (root / "link").symlink_to(elsewhere / "c", target_is_directory=True)
    sneaky = root / "sneaky"
    shutil.copytree(root / "a", sneaky)
    (sneaky / "model.safetensors").unlink()
    (sneaky / "model.safetensors").symlink_to(elsewhere / "c" / "model.safetensors")
    (root / "empty").mkdir()
    _ways_out_through_files(root, elsewhere)
    return {**paths, "root": root, "elsewhere": elsewhere}


def _ways_out_through_files(root: Path, elsewhere: Path) -> None:
    """Model dirs under root (copies of a without its weights file) whose weights are read
    through a shard index: `indexed` names sub/w.safetensors, a symlink out of the root;
    `dotdot` names ../../elsewhere/c's file; `deep` holds a symlink out two levels down;
    `bad_index` an index that is not JSON; `loop` a symlink loop; `corrupt` a weights file
    that is not safetensors."""
    from safetensors import safe_open

    with safe_open(str(root / "a" / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    outside = elsewhere / "c" / "model.safetensors"

    def copy_of_a(name: str, shard: str | None) -> Path:
        d = root / name
        shutil.copytree(root / "a", d)
        (d / "model.safetensors").unlink()
        if shard is not None:
            index = {"metadata": {}, "weight_map": dict.fromkeys(names, shard)}
            (d / "model.safetensors.index.json").write_text(json.dumps(index))
        return d

    (copy_of_a("indexed", "sub/w.safetensors") / "sub").mkdir()
    (root / "indexed" / "sub" / "w.safetensors").symlink_to(outside)
    copy_of_a("dotdot", "../../elsewhere/c/model.safetensors")
    deep = copy_of_a("deep", None)
    shutil.copy(root / "a" / "model.safetensors", deep / "model.safetensors")
    (deep / "x" / "y").mkdir(parents=True)
    (deep / "x" / "y" / "notes.txt").symlink_to(outside)
    copy_of_a("bad_index", "w.safetensors")
    (root / "bad_index" / "model.safetensors.index.json").write_text("{not json")
    loop = copy_of_a("loop", None)
    shutil.copy(root / "a" / "model.safetensors", loop / "model.safetensors")
    (loop / "sub").mkdir()
    (loop / "sub" / "l1").symlink_to(loop / "sub" / "l2")
    (loop / "sub" / "l2").symlink_to(loop / "sub" / "l1")
    (copy_of_a("corrupt", None) / "model.safetensors").write_bytes(b"\x00" * 64)


def make_state(models, **kw):
    sets = ["model.threads=2", "rollout.batch_size=16"]
    return build_state(str(models["a"]), None, sets, name="tiny", **kw)


def live(state):
    """The server in a thread (conftest.serve_in_thread); yields the base URL."""
    return serve_in_thread(state)


@pytest.fixture(scope="module")
def server(models, monkeypatch_module):
    monkeypatch_module.setenv("MATHRL_TEST_KEY", KEY)
    state = make_state(models, api_key_env="MATHRL_TEST_KEY", weights_root=models["root"])
    with live(state) as url:
        yield state, url


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_a(models):
    return load_model(str(models["a"]), dtype="float32", device="cpu")[0]


def forward_logprobs(model, prompt: list[int], tokens: list[int]) -> list[float]:
    """Log-prob of each of `tokens` after `prompt`: one full fp32 forward."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)  # (L, V)
    rows = torch.arange(len(prompt) - 1, len(prompt) + len(tokens) - 1)
    return logp[rows, torch.tensor(tokens)].tolist()


# -- pure pieces ------------------------------------------------------------------------------


def test_stop_strings_cut_text_and_tokens(models):
    from mathrl.models.scratch import train_tokenizer
    from mathrl.rollout.types import Completion
    from mathrl.serve.responses import apply_stop

    tok = train_tokenizer(TEXTS, 300)
    ids = tok.encode("make 12 + 3, then STOP here STOP")
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    done = Completion(0, 0, [1], [*ids, eos], tok.decode(ids), "eos", [-0.5] * (len(ids) + 1))
    cut = apply_stop(tok, done, ["nothing", "STOP", "3, t"])
    assert cut.text == "make 12 + " and cut.finish_reason == "stop"
    assert tok.decode(cut.token_ids).startswith("make 12 + 3, t")
    assert not tok.decode(cut.token_ids[:-1]).startswith("make 12 + 3, t")
    assert cut.logprobs == [-0.5] * len(cut.token_ids)
    whole = apply_stop(tok, done, ["absent"])
    assert (whole.text, whole.token_ids, whole.finish_reason) == (done.text, done.token_ids, "stop")
    cut_off = Completion(0, 0, [1], ids, tok.decode(ids), "length", [-0.5] * len(ids))
    assert apply_stop(tok, cut_off, []).finish_reason == "length"


def test_logprob_bytes_rebuild_split_characters():
    from mathrl.models.scratch import train_tokenizer
    from mathrl.serve.responses import token_bytes, token_pieces

    tok = train_tokenizer(TEXTS, 300)  # never saw é or 中: each is split into byte tokens
    ids = tok.encode("héllo 中<|im_end|>")
    pieces = token_pieces(tok, ids)
    assert "\ufffd" in "".join(pieces)
    assert (
        bytes(b for t in token_bytes(tok, ids, pieces) for b in t).decode() == "héllo 中<|im_end|>"
    )


class EchoEngine:
    """Completes each prompt with its own ids; records the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, SamplingParams]] = []
        self.seeds: list[list[int]] = []

    def generate(self, prompts, sampling, seeds=None):
        from mathrl.rollout.types import Completion, GenerationResult

        self.calls.append((len(prompts), sampling))
        self.seeds.append(seeds)
        out = [
            Completion(i, s, p, list(p), "", "length", [0.0] * len(p))
            for i, p in enumerate(prompts)
            for s in range(sampling.n)
        ]
        return GenerationResult(out)


def test_batcher_groups_equal_sampling_and_gives_each_prompt_its_seed():
    from mathrl.serve.batching import Batcher

    engine = EchoEngine()
    batcher = Batcher(engine, max_rows=100, max_wait_s=0.3)
    hot, cool = SamplingParams(n=2, temperature=1.0), SamplingParams(temperature=0.5)
    jobs = [
        *[([[i, i + 1]], hot) for i in range(3)],
        *[([[10 + i], [20 + i]], cool) for i in range(2)],
        *[([[30 + i], [40 + i]], SamplingParams(seed=i)) for i in range(2)],
    ]
    futures = [batcher.submit(p, s).future for p, s in jobs]  # all queued before the worker starts
    batcher.start()
    try:
        results = [f.result(timeout=10) for f in futures]
    finally:
        batcher.close()
    # seeded jobs share a call too: each prompt brings its own seed (per-row streams)
    assert sorted(rows for rows, _ in engine.calls) == [3, 4, 4]
    assert batcher.engine_calls == 3
    seeded = engine.seeds[[c[1].seed for c in engine.calls].index(0)]
    assert seeded == [prompt_seed(0, 0), prompt_seed(0, 1), prompt_seed(1, 0), prompt_seed(1, 1)]
    assert seeded[0] == 0 and seeded[2] == 1  # prompt 0 of a request keys on its seed as is
    for (prompts, sampling), got in zip(jobs, results, strict=True):
        assert [c.token_ids for c in got] == [p for p in prompts for _ in range(sampling.n)]
        assert [c.prompt_index for c in got] == [
            i for i in range(len(prompts)) for _ in range(sampling.n)
        ]


# -- the openai client over a real socket ----------------------------------------------------


def test_models_and_health(server, client):
    state, url = server
    assert [m.id for m in client.models.list().data] == ["tiny"]
    health = httpx.get(url + "/health", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert health["status"] == "ok" and health["model"] == "tiny"
    assert health["weights"]["digest"] == state.weights["digest"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_health_without_the_key_is_liveness_only(server, headers):
    """Behind a key, /health tells a stranger that the server lives, nothing else (no
    weights path, digest, tokenizer or counters)."""
    _, url = server
    r = httpx.get(url + "/health", headers=headers)
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_chat_n_samples_with_logprobs_equal_a_forward(client, model_a):
    r = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Using the numbers 3 5 8, make 15."}],
        n=3,
        temperature=1.0,
        max_tokens=8,
        logprobs=True,
        extra_body={"return_token_ids": True},
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    for c in r.choices:
        raw = c.model_dump()
        tokens, prompt = raw["token_ids"], raw["prompt_token_ids"]
        assert c.finish_reason in ("stop", "length") and 1 <= len(tokens) <= 8
        got = [t.logprob for t in c.logprobs.content]
        assert got == pytest.approx(forward_logprobs(model_a, prompt, tokens), abs=1e-5)
    assert r.usage.completion_tokens == sum(len(c.model_dump()["token_ids"]) for c in r.choices)


def test_completions_several_prompts(client, model_a):
    r = client.completions.create(
        model="tiny",
        prompt=[[5, 6, 7], [8, 9, 10, 11]],
        n=2,
        max_tokens=6,
        logprobs=0,
        temperature=0.7,
        top_p=0.9,
        extra_body={"return_token_ids": True},
    )
    assert len(r.choices) == 4
    assert [c.model_dump()["prompt_token_ids"] for c in r.choices[1:3]] == [
        [5, 6, 7],
        [8, 9, 10, 11],
    ]
    text = client.completions.create(model="tiny", prompt=["Using", "the"], max_tokens=3)
    assert len(text.choices) == 2
    for c in r.choices:
        raw = c.model_dump()
        expected = forward_logprobs(model_a, raw["prompt_token_ids"], raw["token_ids"])
        assert c.logprobs.token_logprobs == pytest.approx(expected, abs=1e-5)
        assert len(c.logprobs.tokens) == len(raw["token_ids"])


def test_seed_repeats_and_stop_cuts(client):
    ask = dict(model="tiny", prompt="Using the numbers 1 2", max_tokens=16, seed=7)
    first = client.completions.create(**ask, extra_body={"ignore_eos": True})
    again = client.completions.create(**ask, extra_body={"ignore_eos": True})
    text = first.choices[0].text
    assert again.choices[0].text == text and len(text) >= 4
    stop = text[2:4]
    cut = client.completions.create(**ask, stop=[stop], extra_body={"ignore_eos": True})
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_concurrent_requests_share_one_engine_call(server, client):
    state, _ = server
    batcher = state.batcher
    batcher.max_rows, batcher.max_wait_s = 8, 10.0  # fires as soon as 8 rows wait
    try:
        before = batcher.engine_calls

        def ask(i: int) -> str:
            msg = [{"role": "user", "content": f"Using the numbers {i} {i + 1}, make {i * 3}."}]
            r = client.chat.completions.create(model="tiny", messages=msg, max_tokens=6)
            return r.choices[0].message.content

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(8)))
        assert len(answers) == 8
        assert batcher.engine_calls - before == 1
    finally:
        batcher.max_rows, batcher.max_wait_s = 16, 0.01


def test_api_key_enforced(server):
    _, url = server
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(url + "/v1/completions", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(url + "/v1/models").status_code == 401
    bad = openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    ok = httpx.post(url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
ADVERSARIAL = [
    ("not json", b"this is not json", 400),
    ("a JSON array", b"[1, 2]", 400),
    ("NaN temperature", json.dumps({**CHAT, "temperature": float("nan")}).encode(), 400),
    ("huge body", json.dumps({**CHAT, "pad": "x" * (2 << 20)}).encode(), 413),
    (
        "1 MB prompt",
        json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * (1 << 20)}]}).encode(),
        413,
    ),
    (
        "prompt past the context",
        json.dumps({**CHAT, "messages": [{"role": "user", "content": "7 " * 5000}]}).encode(),
        400,
    ),
    ("n=10_000", {**CHAT, "n": 10_000}, 400),
    ("max_tokens=-1", {**CHAT, "max_tokens": -1}, 400),
    ("max_tokens past the cap", {**CHAT, "max_tokens": 10**6}, 400),
    ("max_tokens past the context", {**CHAT, "max_tokens": 300}, 400),
    ('temperature="hot"', {**CHAT, "temperature": "hot"}, 400),
    ("temperature < 0", {**CHAT, "temperature": -0.5}, 400),
    ("top_p = 0", {**CHAT, "top_p": 0}, 400),
    ("n as a string", {**CHAT, "n": "2"}, 400),
    ("seed too large", {**CHAT, "seed": 2**70}, 400),
    ("messages missing", {"model": "tiny"}, 400),
    ("messages empty", {**CHAT, "messages": []}, 400),
    ("a bad role", {**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}, 400),
    ("content a number", {**CHAT, "messages": [{"role": "user", "content": 5}]}, 400),
    ("unknown field (a typo)", {**CHAT, "max_token": 5}, 400),
    ("stream", {**CHAT, "stream": True}, 400),
    ("top_logprobs", {**CHAT, "logprobs": True, "top_logprobs": 3}, 400),
    ("five stop strings", {**CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400),
    ("another model", {**CHAT, "model": "gpt-4"}, 404),
]
COMPLETION_ADVERSARIAL = [
    ("token id out of vocab", {"model": "tiny", "prompt": [10**9]}, 400),
    ("negative token id", {"model": "tiny", "prompt": [[1, -1]]}, 400),
    ("empty prompt list", {"model": "tiny", "prompt": []}, 400),
    ("empty prompt", {"model": "tiny", "prompt": [[]]}, 400),
    ("mixed prompt list", {"model": "tiny", "prompt": [1, "a"]}, 400),
    ("top logprobs", {"model": "tiny", "prompt": "hi", "logprobs": 5}, 400),
    ("echo", {"model": "tiny", "prompt": "hi", "echo": True}, 400),
    ("prompt missing", {"model": "tiny"}, 400),
]


def assert_error_shape(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert "Traceback" not in r.text
    return err


@pytest.mark.parametrize(
    "route,body,status",
    [("/v1/chat/completions", b, s) for _, b, s in ADVERSARIAL]
    + [("/v1/completions", b, s) for _, b, s in COMPLETION_ADVERSARIAL],
    ids=[name for name, _, _ in ADVERSARIAL + COMPLETION_ADVERSARIAL],
)
def test_bad_requests_get_4xx_in_openai_shape(server, route, body, status):
    _, url = server
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(url + route, content=content, headers=headers, timeout=30)
    assert_error_shape(r, status)


def test_unknown_field_and_bad_value_are_named(server):
    _, url = server
    headers = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(url + "/v1/chat/completions", json={**CHAT, "max_token": 5}, headers=headers)
    assert assert_error_shape(r, 400)["param"] == "max_token"
    r = httpx.post(url + "/v1/chat/completions", json={**CHAT, "n": 10_000}, headers=headers)
    assert assert_error_shape(r, 400)["param"] == "n"
    assert_error_shape(httpx.get(url + "/v2/nothing", headers=headers), 404)
    assert_error_shape(httpx.get(url + "/v1/chat/completions", headers=headers), 405)


# -- load_weights -------------------------------------------------------------------------


@pytest.fixture
def local(models):
    """An in-process app (no key) whose weights root is root/; yields (state, TestClient)."""
    from fastapi.testclient import TestClient

    state = make_state(models, weights_root=models["root"])
    with TestClient(create_app(state)) as tc:
        yield state, tc


@pytest.mark.parametrize(
    "path",
    [
        "../elsewhere/c",
        "a/../../elsewhere/c",
        "{elsewhere}/c",
        "/etc",
        "link",  # a symlink inside the root pointing out
        "sneaky",  # a model dir whose weights file links out
        "indexed",  # a shard index naming a symlink in a subdirectory that links out
        "dotdot",  # a shard index naming ../../elsewhere
        "deep",  # a symlink out two directories down
    ],
)
def test_load_weights_outside_the_root_is_refused(local, models, path):
    state, tc = local
    r = tc.post("/v1/load_weights", json={"path": path.format(elsewhere=models["elsewhere"])})
    assert assert_error_shape(r, 403)["code"] == "path_outside_root"
    assert state.weights["version"] == 0


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("bad_index", "model.safetensors.index.json is not a JSON object"),
        ("loop", "cannot read 'loop'"),
        ("corrupt", "cannot load 'corrupt'"),
    ],
)
def test_load_weights_of_a_broken_model_dir_is_a_400_over_a_socket(server, path, message):
    state, url = server
    headers = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(url + "/v1/load_weights", json={"path": path}, headers=headers, timeout=60)
    err = assert_error_shape(r, 400)
    assert err["code"] == "not_a_model" and message in err["message"]
    assert state.weights["version"] == 0


def test_a_refused_load_weights_is_sent_once(server):
    """The server's 409 (another tokenizer) is final: the client does not send the load
    again, though it would retry a 503 up to 4 times."""
    from mathrl.rollout.http import HttpClient, HttpError

    state, url = server
    with HttpClient(url, KEY, timeout_s=60, retries=4, backoff_s=0.01) as http:
        with pytest.raises(HttpError) as err:
            http.request_json("POST", "/v1/load_weights", {"path": "other_tok"})
    assert (err.value.status, err.value.tries, err.value.gave_up) == (409, 1, False)
    assert http.retries_made() == 0 and state.weights["version"] == 0


def test_load_weights_swaps_and_checks_the_tokenizer(local, models):
    state, tc = local
    assert_error_shape(tc.post("/v1/load_weights", json={"path": "missing"}), 404)
    assert_error_shape(tc.post("/v1/load_weights", json={"path": "empty"}), 400)
    r = tc.post("/v1/load_weights", json={"path": "other_tok"})
    assert assert_error_shape(r, 409)["code"] == "tokenizer_mismatch"
    r = tc.post("/v1/load_weights", json={"path": "b"})
    assert r.status_code == 200 and r.json()["version"] == 1
    body = {"model": "tiny", "prompt": "Using", "max_tokens": 5, "logprobs": 0}
    out = tc.post("/v1/completions", json={**body, "return_token_ids": True}).json()["choices"][0]
    model_b = load_model(str(models["b"]), dtype="float32", device="cpu")[0]
    expected = forward_logprobs(model_b, out["prompt_token_ids"], out["token_ids"])
    assert out["logprobs"]["token_logprobs"] == pytest.approx(expected, abs=1e-5)
    # the digest a trainer checks: the served weights are b's, and differ from a's
    from mathrl.models.identity import weights_digest

    assert (
        r.json()["digest"]
        == weights_digest(model_b)
        == tc.get("/health").json()["weights"]["digest"]
    )
    model_a = load_model(str(models["a"]), dtype="float32", device="cpu")[0]
    assert weights_digest(model_a) != weights_digest(model_b)


def test_load_weights_is_off_without_a_root(models):
    from fastapi.testclient import TestClient

    with TestClient(create_app(make_state(models))) as tc:
        r = tc.post("/v1/load_weights", json={"path": str(models["b"])})
        assert assert_error_shape(r, 403)["code"] == "load_weights_disabled"


# -- the command --------------------------------------------------------------------------


def test_cli_binds_loopback_by_default_and_needs_a_set_key(run_cli, models, monkeypatch):
    seen = {}
    monkeypatch.setattr(
        "mathrl.serve.launch.run_server", lambda state, host, port: seen.update(locals())
    )
    monkeypatch.setenv("SERVE_KEY", KEY)
    res = run_cli("serve", "--model", models["a"], "--api-key-env", "SERVE_KEY")
    assert res.code == 0, res.err
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8000)
    assert seen["state"].api_key == KEY and seen["state"].name == str(models["a"])
    monkeypatch.delenv("SERVE_KEY")
    res = run_cli("serve", "--model", models["a"], "--api-key-env", "SERVE_KEY")
    assert res.code == 2 and "SERVE_KEY" in res.err and "not set" in res.err
