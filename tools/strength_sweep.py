"""Calibrating and showing `--style-strength`: sweeps of α/β in units of the measured far-end ratio.

Usage:
  python tools/strength_sweep.py sweep OUT --pairs C.jpg:S.jpg,... [--sizes 128,256] [--poolings max,avg]
         [--inits random,content] [--offsets -2,-1,0,1] [--iterations 100]
  python tools/strength_sweep.py report OUT... [--target 0.45]
  python tools/strength_sweep.py sheet OUT C.jpg S.jpg --rows 256:max,768:max,256:avg [--strengths 0,.25,.5,.75,1]

`sweep` runs every pair x size x pooling x init x offset g with α/β = 10^g · style_far / content_far
(β = 1; see `stylerun.strength`), and appends one JSON line per run to OUT/runs.jsonl (a rerun skips
what is there). Each run's final image is evaluated once more for its unweighted terms C and S;
``reach`` = C / content_far is how far the picture went from the photo toward the painting
(0: the photo's features, 1: as far as the painting itself), the calibration's measure of balance.
`report` prints, per configuration, the offset g at which reach crosses --target (log-linear
interpolation), which is what `strength.CENTRE` records. `sheet` runs `--style-strength` values for
each SIZE:POOLING row and writes OUT/sheet-<name>.png, every panel shown at the same height.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from stylerun.engine.loss import StyleLoss
from stylerun.engine.run import Job, run
from stylerun.figures import contact_sheet
from stylerun.images.codec import to_uint8

THREADS = 2


def far_terms(content: str, style: str, size: int, pooling: str) -> tuple[float, float]:
    return StyleLoss(content, style, size=size, pooling=pooling, threads=THREADS).far_terms


def measure(job: Job, far: tuple[float, float]) -> dict:
    began = time.perf_counter()
    outcome = run(job)
    loss = outcome.loss_object
    loss.loss_and_grad(outcome.image.astype(np.float32))
    c, s = (float(v) for v in loss.last_terms)
    return {"alpha": loss.alpha, "content": c, "style": s, "reach": c / far[0], "style_left": s / far[1],
            "content_far": far[0], "style_far": far[1], "shape": list(loss.shape),
            "seconds": round(time.perf_counter() - began, 1)}, outcome


def _key(row: dict) -> tuple:
    return row["pair"], row["size"], row["pooling"], row["init"], row["offset"]


def sweep(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    done = {_key(json.loads(line)) for line in log.read_text().splitlines()} if log.exists() else set()
    for pair in args.pairs.split(","):
        content, style = pair.split(":")
        for size in (int(s) for s in args.sizes.split(",")):
            for pooling in args.poolings.split(","):
                far = None
                for init in args.inits.split(","):
                    for g in (float(v) for v in args.offsets.split(",")):
                        if (pair, size, pooling, init, g) in done:
                            continue
                        far = far or far_terms(content, style, size, pooling)
                        job = Job.of(content, style, size=size, pooling=pooling, init=init, threads=THREADS,
                                     iterations=args.iterations, alpha=10 ** g * far[1] / far[0], beta=1.0)
                        row, outcome = measure(job, far)
                        row = {"pair": pair, "size": size, "pooling": pooling, "init": init, "offset": g,
                               "iterations": args.iterations, **row}
                        name = f"{Path(content).stem}-{Path(style).stem}-{size}-{pooling}-{init}-{g:+g}.png"
                        Image.fromarray(to_uint8(outcome.image)).save(out / name)
                        with log.open("a") as f:
                            f.write(json.dumps(row) + "\n")
                        print(f"{pair} {size} {pooling} {init} g={g:+g}: reach {row['reach']:.2f} style left "
                              f"{row['style_left']:.3g} ({row['seconds']} s)", file=sys.stderr, flush=True)


def crossing(rows: list[dict], target: float) -> float | None:
    """The offset g where reach crosses `target`, interpolated between the neighbouring runs."""
    rows = sorted(rows, key=lambda r: r["offset"])
    for a, b in zip(rows, rows[1:], strict=False):
        if (a["reach"] - target) * (b["reach"] - target) <= 0 and a["reach"] != b["reach"]:
            return a["offset"] + (target - a["reach"]) * (b["offset"] - a["offset"]) / (b["reach"] - a["reach"])
    return None


def report(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for out in args.out for line in (Path(out) / "runs.jsonl").read_text().splitlines()]
    configs: dict[tuple, list[dict]] = {}
    for r in rows:
        configs.setdefault((r["pair"], r["size"], r["pooling"], r["init"]), []).append(r)
    print("| pair | longest side | pooling | init | reach at g = " +
          " | ".join(f"{g:+g}" for g in sorted({r['offset'] for r in rows})) + " | g at reach "
          f"{args.target} |")
    offsets = sorted({r["offset"] for r in rows})
    by_init: dict[str, list[float]] = {}
    for key, runs in sorted(configs.items()):
        reach = {r["offset"]: r["reach"] for r in runs}
        g = crossing(runs, args.target)
        if g is not None:
            by_init.setdefault(key[3], []).append(g)
        cells = " | ".join(f"{reach[o]:.2f}" if o in reach else "" for o in offsets)
        pair = " + ".join(Path(p).stem for p in key[0].split(":"))
        print(f"| {pair} | {' | '.join(map(str, key[1:]))} | {cells} | {'' if g is None else f'{g:+.2f}'} |")
    for init, gs in by_init.items():
        print(f"{init}: g = {np.mean(gs):+.2f} (mean of {len(gs)}; {min(gs):+.2f} .. {max(gs):+.2f})")


def strength_run(args: argparse.Namespace, out: Path, size: int, pooling: str, s: float) -> tuple[Image.Image, float]:
    """One panel: a run at style strength `s`, or the one already in OUT (its picture and its α/β)."""
    stem = f"{Path(args.content).stem}-{Path(args.style).stem}-{size}-{pooling}-{args.init}-{args.iterations}-S{s:g}"
    image, record = out / f"{stem}.png", out / f"{stem}.json"
    if record.exists():
        return Image.open(image).convert("RGB"), json.loads(record.read_text())
    job = Job.of(args.content, args.style, size=size, pooling=pooling, style_strength=s, init=args.init,
                 iterations=args.iterations, threads=THREADS)
    began = time.perf_counter()
    outcome = run(job)
    loss = outcome.loss_object
    picture = Image.fromarray(to_uint8(outcome.image))
    picture.save(image)
    record.write_text(json.dumps(loss.alpha / loss.beta))
    print(f"{size}:{pooling} S={s:g}: alpha {loss.alpha:.3g} ({time.perf_counter() - began:.0f} s)", file=sys.stderr,
          flush=True)
    return picture, loss.alpha / loss.beta


def sheet(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    strengths = [float(s) for s in args.strengths.split(",")]
    for row in args.rows.split(","):
        size, pooling = row.split(":")
        for s in strengths:
            picture, ratio = strength_run(args, out, int(size), pooling, s)
            images.append(picture.resize((round(picture.width * args.height / picture.height), args.height),
                                         Image.Resampling.LANCZOS))
            labels.append([f"S={s:g}  {picture.width}x{picture.height} {pooling}", f"alpha/beta {ratio:.3g}"])
    title = (f"--style-strength, {Path(args.content).stem} + {Path(args.style).stem}, init {args.init}, "
             f"{args.iterations} iterations")
    path = out / f"sheet-{args.name}.png"
    contact_sheet(title, images, labels, len(strengths)).save(path)
    print(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sweep")
    p.add_argument("out")
    p.add_argument("--pairs", required=True)
    p.add_argument("--sizes", default="128,256")
    p.add_argument("--poolings", default="max,avg")
    p.add_argument("--inits", default="random,content")
    p.add_argument("--offsets", default="-3,-2,-1,0,1")
    p.add_argument("--iterations", type=int, default=100)
    p = sub.add_parser("report")
    p.add_argument("out", nargs="+")
    p.add_argument("--target", type=float, default=0.45)
    p = sub.add_parser("sheet")
    p.add_argument("out")
    p.add_argument("content")
    p.add_argument("style")
    p.add_argument("--rows", default="256:max,256:avg")
    p.add_argument("--strengths", default="0,0.25,0.5,0.75,1")
    p.add_argument("--init", default="content")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--height", type=int, default=192)
    p.add_argument("--name", default="strength")
    args = parser.parse_args()
    {"sweep": sweep, "report": report, "sheet": sheet}[args.command](args)


if __name__ == "__main__":
    main()
