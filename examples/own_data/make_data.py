"""Write a small MATH-style dataset (LaTeX answers, worked solutions) to data/{train,test}.jsonl.

Generated, so it needs no download: fraction simplification (answers like \\frac{3}{4}) and
sums (answers like 42). Every answer is computed, so every problem is solvable.
Run: python make_data.py [--out data] [--train 400] [--test 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from math import gcd
from pathlib import Path


def fraction_problem(rng: random.Random) -> dict[str, str]:
    while True:
        p, q, k = rng.randint(1, 9), rng.randint(2, 9), rng.randint(2, 6)
        if gcd(p, q) == 1 and p != q:
            break
    answer = f"\\frac{{{p}}}{{{q}}}"
    return {
        "problem": f"Simplify $\\frac{{{p * k}}}{{{q * k}}}$.",
        "solution": f"Divide the numerator and the denominator by {k}: ${answer}$.",
        "answer": answer,
        "level": "Level 1",
    }


def sum_problem(rng: random.Random) -> dict[str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return {
        "problem": f"Compute ${a} + {b}$.",
        "solution": f"Adding the tens and the ones gives ${a + b}$.",
        "answer": str(a + b),
        "level": "Level 1",
    }


def make(n: int, rng: random.Random, prefix: str, seen: set[str]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    while len(rows) < n:
        row = (fraction_problem if rng.random() < 0.5 else sum_problem)(rng)
        if row["problem"] in seen:
            continue
        seen.add(row["problem"])
        rows.append({"uid": f"{prefix}{len(rows)}", **row})
    return rows


def main(out: str = "data", train: int = 400, test: int = 100, seed: int = 0) -> None:
    rng, seen = random.Random(seed), set()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", train), ("test", test)):
        rows = make(n, rng, f"{name}-", seen)
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {train} train and {test} test problems to {root}/")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data")
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    main(**vars(parser.parse_args()))
