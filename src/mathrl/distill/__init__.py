"""Distillation: sample a teacher's solutions from an OpenAI-compatible endpoint, score them
with the task's reward, and keep them as SFT pairs (`mathrl distill`).

One chat request per (problem, sample) with n = 1: every endpoint takes it (some refuse or
ignore n > 1), a retry re-asks one trace only, and resume is exact per trace. The request
carries a seed derived from the config's seed, the problem and the sample, so a seeded
endpoint gives the same trace again (`seed=False` leaves it out).

Threads, not asyncio: the work is a few dozen blocking HTTP calls at a time; httpx's sync
client is thread-safe, the reward pool and the crash-safe appends are synchronous, and a
worker's retry loop reads top to bottom. `concurrency` daemon threads take requests from a
queue; the main thread alone scores and writes, so lines never interleave.

Crash safety: each batch of finished traces is one O_APPEND write + fsync (io.append_jsonl),
so a kill at any moment can only tear the last line, which reading skips and the next append
drops. On start the file is read and every (problem_id, sample) in it is skipped. Every line
records model, endpoint, task (+ fingerprint) and split, and a file written for others is
refused. A lock on the file keeps two runs from writing it at once.

Bounds: retries, the deadline per request, the body cap and the rate limit are the
transport's (rollout.http); the reward runs in the bounded pool (timeout, capped inputs).

options.py: DistillOptions.  teacher.py: the endpoint, its chat replies, errors in the
command's words.  traces.py: the trace file (identity, lock, records, SFT pairs).
run.py: run_distill, the loop.
"""

from mathrl.distill.options import DistillOptions
from mathrl.distill.run import run_distill
from mathrl.distill.teacher import Reply, chat_url, parse_reply
from mathrl.distill.traces import problems, trace_seed, write_sft

__all__ = [
    "DistillOptions",
    "Reply",
    "chat_url",
    "parse_reply",
    "problems",
    "run_distill",
    "trace_seed",
    "write_sft",
]
