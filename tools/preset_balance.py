"""Where α·content meets β·style under a preset: a sweep of alpha (beta 1) at a few sizes.

Usage: python tools/preset_balance.py CONTENT STYLE [--preset seed] [--sizes 128:100,256:50]
       [--alphas 1e-8,...,1e-2] > balance.json

Each run is `stylerun.run` with the preset's settings but for `size`, `iterations` (SIZE:ITERATIONS)
and `alpha`; the final image is evaluated once more to get its unweighted content and style
terms C and S. The balance point is where α·C = β·S, interpolated in log α between the
two alphas whose ratio α·C / β·S crosses 1. Prints a JSON report and a Markdown table on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

from stylerun.engine.run import Job, run

ALPHAS = tuple(10.0 ** -k for k in range(8, 1, -1))


def measure(content: str, style: str, preset: str, size: int, iterations: int, alpha: float) -> dict:
    job = Job.of(content, style, preset=preset, size=size, iterations=iterations, alpha=alpha, beta=1.0, threads=2)
    began = time.perf_counter()
    outcome = run(job)
    loss = outcome.loss_object
    loss.loss_and_grad(outcome.image.astype(np.float32))
    c, s = loss.last_terms
    return {"size": size, "shape": list(loss.shape), "iterations": outcome.iterations, "alpha": alpha,
            "content": float(c), "style": float(s), "ratio": alpha * float(c) / float(s),
            "seconds": round(time.perf_counter() - began, 1)}


def balance(rows: list[dict]) -> float | None:
    """The alpha at which alpha*C / S = 1, interpolated in log-log between the sweep's neighbours."""
    for a, b in zip(rows, rows[1:], strict=False):
        if (a["ratio"] - 1) * (b["ratio"] - 1) <= 0:
            la, lb = math.log10(a["alpha"]), math.log10(b["alpha"])
            ra, rb = math.log10(a["ratio"]), math.log10(b["ratio"])
            return 10 ** (la + (0 - ra) * (lb - la) / (rb - ra)) if rb != ra else a["alpha"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("content")
    parser.add_argument("style")
    parser.add_argument("--preset", default="seed")
    parser.add_argument("--sizes", default="128:100,256:50", help="SIZE:ITERATIONS,...")
    parser.add_argument("--alphas", default=",".join(f"{a:g}" for a in ALPHAS))
    args = parser.parse_args()
    report = {"preset": args.preset, "content": args.content, "style": args.style, "sizes": {}}
    for item in args.sizes.split(","):
        size, iterations = (int(v) for v in item.split(":"))
        rows = []
        for alpha in (float(a) for a in args.alphas.split(",")):
            rows.append(measure(args.content, args.style, args.preset, size, iterations, alpha))
            r = rows[-1]
            print(f"| {size} | {iterations} | {alpha:g} | {r['content']:.3g} | {r['style']:.3g} | "
                  f"{alpha * r['content']:.3g} | {r['style']:.3g} | {r['ratio']:.3g} | {r['seconds']} s |",
                  file=sys.stderr, flush=True)
        report["sizes"][str(size)] = {"iterations": iterations, "runs": rows, "balance_alpha": balance(rows)}
        print(f"size {size}: balance at alpha/beta = {balance(rows)}", file=sys.stderr, flush=True)
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
