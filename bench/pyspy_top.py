"""Top functions of a py-spy raw profile, inside one region of the stack (e.g. the rollout).

Usage:
  .venv/bin/py-spy record --rate 200 --format raw -o prof.txt -- \
      .venv/bin/python bench/grpo_mathrl_worker.py SPEC.json --standalone
  .venv/bin/python bench/pyspy_top.py prof.txt [--region HFEngine.generate] [--top 25]

SPEC.json comes from `bench/bench_grpo.py --spec-only DIR`. Prints, for the samples whose
stack passes through the region's frame, the share of inclusive time ("total") and of
self time ("self", the leaf frame) per function, so both the hot Python paths and the
hot leaves show.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

FRAME = re.compile(r"^(?P<fn>.+?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """'fn (path/file.py:123)' -> 'fn (file.py)' (line numbers merged)."""
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{m['fn']} ({m['file'].rsplit('/', 1)[-1]})"


def load(path: str) -> list[tuple[list[str], int]]:
    stacks = []
    with open(path) as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            stacks.append(([frame_name(f) for f in stack.split(";")], int(count)))
    return stacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("--region", default=None, help="substring of a frame, e.g. policy_update")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    stacks = load(args.profile)
    total_all = sum(c for _, c in stacks)
    if args.region:
        stacks = [(s, c) for s, c in stacks if any(args.region in f for f in s)]
    n = sum(c for _, c in stacks)
    print(f"{n} samples in region {args.region!r} ({100 * n / max(1, total_all):.0f}% of all)")
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, c in stacks:
        for f in set(frames):
            inclusive[f] += c
        own[frames[-1]] += c
    print(f"\n{'total %':>8s}  function")
    for f, c in inclusive.most_common(args.top):
        print(f"{100 * c / n:8.1f}  {f}")
    print(f"\n{'self %':>8s}  function")
    for f, c in own.most_common(args.top):
        print(f"{100 * c / n:8.1f}  {f}")


if __name__ == "__main__":
    main()
