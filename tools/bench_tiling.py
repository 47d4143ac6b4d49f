"""Peak RSS and seconds per evaluation of the loss, whole image vs tiled (`tile_size`).

Each case runs in its own process so that its peak RSS (ru_maxrss) is its own:

    python tools/bench_tiling.py --sides 612 1224 --tiles 0 256 --evals 2 --threads 1

A tile of 0 means the whole image at once. Explicit alpha/beta skip the style-strength measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CASE = """
import json, resource, sys, time
import numpy as np
from stylerun.engine.loss import StyleLoss
side, tile, evals, threads = (int(a) for a in sys.argv[1:5])
t0 = time.perf_counter()
loss = StyleLoss(sys.argv[5], sys.argv[6], size=side, alpha=1.0, beta=1e3, threads=threads,
                 tile_size=tile or None)
build = time.perf_counter() - t0
x = loss.content_image.copy()
times = []
for _ in range(evals):
    t = time.perf_counter()
    loss.loss_and_grad(x)
    times.append(time.perf_counter() - t)
h, w, _ = loss.shape
print(json.dumps({"side": side, "w": w, "h": h, "mp": w * h / 1e6, "tile": tile, "build_s": build,
                  "s_eval": float(np.median(times)),
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[612, 1224, 2448])
    parser.add_argument("--tiles", type=int, nargs="+", default=[0, 256])
    parser.add_argument("--evals", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--content", default=str(ROOT / "examples" / "chelsea.jpg"))
    parser.add_argument("--style", default=str(ROOT / "examples" / "starry_night.jpg"))
    args = parser.parse_args()
    for side in args.sides:
        for tile in args.tiles:
            run = subprocess.run([sys.executable, "-c", CASE, str(side), str(tile), str(args.evals), str(args.threads),
                                  args.content, args.style], capture_output=True, text=True)
            if run.returncode:
                print(json.dumps({"side": side, "tile": tile, "error": run.stderr.strip().splitlines()[-1:]}))
            else:
                print(run.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
