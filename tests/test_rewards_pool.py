"""RewardPool: hard per-call time limit, error isolation, order, threads, cleanup."""

import multiprocessing
import os
import sys
import threading
import time

import pytest

from mathrl.errors import ConfigError, MathrlError
from mathrl.rewards.pool import RewardPool, score_many
from mathrl.rewards.scoring import FORMAT_REWARD, RewardResult, score_gsm8k, zero_result

TIMEOUT_S = 0.5


# Helpers live at module level so worker processes can unpickle them.
def score_value(x: str) -> RewardResult:
    """Reward = the item's number; hangs, raises or exits on request."""
    if x == "hang":
        time.sleep(100)
    if x == "raise":
        raise ValueError("bad item " + "x" * 500)
    if x == "exit":
        os._exit(3)
    if x == "sys_exit":
        sys.exit(4)
    if x == "slow":
        time.sleep(0.2)
    if x == "none":
        return None  # type: ignore[return-value]
    if x == "nan":
        return RewardResult(float("nan"), {}, None, False, False, False, "ok")
    if x == "inf":
        return RewardResult(float("inf"), {}, None, False, False, False, "ok")
    return RewardResult(float(x), {"correct": 1.0}, x, True, True, True, "ok")


def _reasons(results: list[RewardResult]) -> list[str]:
    return [r.reason for r in results]


@pytest.fixture
def pool():
    before = set(multiprocessing.active_children())
    with RewardPool(TIMEOUT_S, workers=2) as p:
        yield p
    assert set(multiprocessing.active_children()) == before


@pytest.mark.timeout(10)
def test_hanging_item_times_out_others_scored(pool: RewardPool) -> None:
    items = [("1",), ("hang",), ("2",), ("3",)]
    start = time.monotonic()
    results = pool.map(score_value, items)
    assert time.monotonic() - start < TIMEOUT_S + 1.0
    assert [r.reward for r in results] == [1.0, 0.0, 2.0, 3.0]
    assert results[1] == zero_result("timeout")
    assert pool.stats["timeouts"] == 1 and pool.stats["restarts"] == 1
    # The replacement worker serves the next call.
    assert [r.reward for r in pool.map(score_value, [("4",), ("5",)])] == [4.0, 5.0]


@pytest.mark.timeout(10)
def test_two_hangs_in_one_batch(pool: RewardPool) -> None:
    results = pool.map(score_value, [("hang",), ("hang",), ("7",)])
    assert _reasons(results) == ["timeout", "timeout", "ok"]
    assert pool.stats["timeouts"] == 2


@pytest.mark.timeout(10)
def test_errors_and_invalid_rewards(pool: RewardPool) -> None:
    items = [("raise",), ("none",), ("nan",), ("inf",), ("exit",), ("sys_exit",), ("8",)]
    results = pool.map(score_value, items)
    reasons = _reasons(results)
    assert reasons[0].startswith("error: ValueError: bad item xxx")
    assert len(reasons[0]) == 200
    assert reasons[1:4] == ["invalid_reward"] * 3
    assert reasons[4] == "error: worker died (exit code 3)"
    assert reasons[5] == "error: SystemExit: 4"
    assert reasons[6] == "ok"
    assert [r.reward for r in results] == [0.0] * 6 + [8.0]
    assert pool.stats["errors"] == 3 and pool.stats["invalid"] == 3


@pytest.mark.timeout(10)
def test_order_preserved_across_batches(pool: RewardPool) -> None:
    items = [(str(i),) for i in range(500)]
    assert [r.reward for r in pool.map(score_value, items)] == [float(i) for i in range(500)]
    assert pool.map(score_value, []) == []


@pytest.mark.timeout(10)
def test_timeout_honoured_off_main_thread(pool: RewardPool) -> None:
    out: list[list[RewardResult]] = []
    thread = threading.Thread(target=lambda: out.append(pool.map(score_value, [("hang",), ("1",)])))
    start = time.monotonic()
    thread.start()
    thread.join(timeout=TIMEOUT_S + 3)
    assert not thread.is_alive()
    assert time.monotonic() - start < TIMEOUT_S + 1.0
    assert _reasons(out[0]) == ["timeout", "ok"]


@pytest.mark.timeout(10)
def test_close_leaves_no_processes() -> None:
    before = set(multiprocessing.active_children())
    pool = RewardPool(TIMEOUT_S, workers=2)
    assert len(set(multiprocessing.active_children()) - before) == 2
    pool.map(score_value, [("hang",), ("exit",), ("1",)])
    pool.close()
    pool.close()  # idempotent
    assert set(multiprocessing.active_children()) == before
    with pytest.raises(MathrlError, match="closed"):
        pool.map(score_value, [("1",)])


def test_unpicklable_fn_is_rejected(pool: RewardPool) -> None:
    with pytest.raises(TypeError, match="picklable"):
        pool.map(lambda x: x, [("1",)])


def test_in_process_mode_catches_errors_and_marks_overruns() -> None:
    before = set(multiprocessing.active_children())
    with RewardPool(0.1, workers=0) as pool:
        results = pool.map(score_value, [("raise",), ("nan",), ("slow",), ("2",)])
        assert _reasons(results)[1:] == ["invalid_reward", "timeout", "ok"]
        assert results[0].reason.startswith("error: ValueError: bad item")
        assert set(multiprocessing.active_children()) == before
        assert pool.stats == {"calls": 4, "timeouts": 1, "errors": 1, "invalid": 1, "restarts": 0}
    assert score_many(score_value, [("3",)], timeout_s=1.0)[0].reward == 3.0


@pytest.mark.timeout(60)
def test_spawn_start_method() -> None:
    items = [("#### 72", "72", "hash"), ("#### 7", "72", "hash")]
    with RewardPool(10.0, workers=1, start_method="spawn") as pool:
        assert [r.reward for r in pool.map(score_gsm8k, items)] == [1.0, FORMAT_REWARD]


@pytest.mark.parametrize(("timeout_s", "workers"), [(0.0, 1), (-1.0, 1), (1.0, -1)])
def test_bad_config(timeout_s: float, workers: int) -> None:
    with pytest.raises(ConfigError):
        RewardPool(timeout_s, workers)


@pytest.mark.timeout(30)
def test_real_scorer_throughput() -> None:
    body = "Natalia sold 48/2 = 24 clips in May. " * 20
    items = [(f"{body}\nFinal: {i % 100}", str(i % 97), "final_line") for i in range(1000)]
    expected = [score_gsm8k(*item) for item in items]
    with RewardPool(5.0, workers=2) as pool:
        start = time.perf_counter()
        results = pool.map(score_gsm8k, items)
        elapsed = time.perf_counter() - start
    assert results == expected
    assert elapsed < 1.0


@pytest.mark.timeout(10)
def test_interrupted_map_leaves_no_stale_replies(
    pool: RewardPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(*args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pool, "_wait_and_collect", interrupt)
        with pytest.raises(KeyboardInterrupt):
            pool.map(score_value, [("slow",), ("slow",)])
    assert [r.reward for r in pool.map(score_value, [("5",), ("6",)])] == [5.0, 6.0]


# ---------------------------------------------------------------- containment


def _boom() -> None:
    raise RuntimeError("unpickling this runs code")


class EvilFloat(float):
    """Pickles, but loading it raises (and would run code in the trainer)."""

    def __reduce__(self):  # type: ignore[override]
        return (_boom, ())


def score_contained(x: str, pid_file: str = "") -> RewardResult:
    """Items that test containment: a child left running, a bad reply, memory, CPU."""
    if x == "child_then_hang":
        import subprocess

        child = subprocess.Popen(["sleep", "25"])
        with open(pid_file, "w") as fh:
            fh.write(str(child.pid))
        time.sleep(100)
    if x == "evil_result":
        return RewardResult(
            EvilFloat(2.0), {"correct": EvilFloat(1.0)}, None, True, True, True, "ok"
        )
    if x == "allocate":
        block = bytearray(512 << 20)  # 512 MiB, over the 64 MiB allowed
        return RewardResult(float(len(block)), {}, None, False, False, False, "ok")
    if x == "spin":
        while True:
            pass
    return RewardResult(float(x), {}, x, True, True, True, "ok")


def _alive(pid: int) -> bool:
    """pid is running (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and process groups")
@pytest.mark.timeout(20)
def test_a_timed_out_rewards_own_children_die_with_it(tmp_path) -> None:
    pid_file = tmp_path / "child.pid"
    with RewardPool(TIMEOUT_S, workers=1) as pool:
        results = pool.map(score_contained, [("child_then_hang", str(pid_file)), ("3",)])
        assert _reasons(results) == ["timeout", "ok"]
        child = int(pid_file.read_text())
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the reward's `sleep 25` outlived its timed-out reward"


@pytest.mark.timeout(20)
def test_a_reply_that_cannot_be_loaded_costs_only_its_item(pool: RewardPool) -> None:
    results = pool.map(score_contained, [("1",), ("evil_result",), ("4",)])
    # sent as plain values: the subclass with a hostile __reduce__ arrives as a float
    assert [r.reward for r in results] == [1.0, 2.0, 4.0]
    assert results[1].components == {"correct": 1.0}
    assert type(results[1].reward) is float


def test_the_parent_reads_plain_values_only() -> None:
    from mathrl.rewards.pool import _read_reply

    a, b = multiprocessing.Pipe()
    a.send(("item", 0, (EvilFloat(1.0), {}, None, False, False, False, "ok")))
    message = _read_reply(b)
    assert message[0] == "unreadable" and "may not name" in message[1]
    a.send(("item", 0, (1.0, {"x": 0.5}, "p", True, False, True, "ok")))
    assert _read_reply(b) == ("item", 0, (1.0, {"x": 0.5}, "p", True, False, True, "ok"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux's")
@pytest.mark.timeout(30)
def test_memory_and_cpu_limits_in_workers() -> None:
    with RewardPool(20.0, workers=1, memory_mb=64, cpu_s=1) as pool:
        results = pool.map(score_contained, [("allocate",), ("spin",), ("5",)])
    assert results[0].reason == "error: MemoryError: "
    assert results[1].reason == "error: worker died (CPU limit of 1 s)"
    assert results[2].reward == 5.0
    # off (0): the same allocation succeeds
    with RewardPool(20.0, workers=1, memory_mb=0, cpu_s=0) as pool:
        assert pool.map(score_contained, [("allocate",)])[0].reward == float(512 << 20)
