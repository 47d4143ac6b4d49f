"""Choosing the default schedule by measurement: candidates x pairs, timed and judged (docs/quality.md).

Usage:
  python tools/schedule_sweep.py run OUT --size 384 --pairs PHOTO:PAINTING,... CANDIDATE...
  python tools/schedule_sweep.py table OUT [--candidates NAME,...] [--size N,...]
  python tools/schedule_sweep.py sheet OUT SHEET.jpg --candidates NAME,... [--size N,...] [--height 150]

A CANDIDATE is ``NAME:option=value,option=value`` (values as JSON, else text), e.g.
``old:scales=1,iterations=500`` or ``new:`` for the defaults. `run` transfers every pair with every
candidate at --size, writes OUT/SIZE/NAME/PHOTO+PAINTING.png, and appends one JSON line per run to
OUT/runs.jsonl with its wall time, the CPU time of this process over the run (onnxruntime's threads
included; on a shared machine the fairer figure) and `quality.Judge`'s three measures; a run already
there is skipped. `table` prints the mean over pairs of each candidate as a Markdown table; `sheet`
lays the pictures out, one row per pair and one column per candidate, each labelled with its
time (wall and CPU) and measures.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import Judge  # noqa: E402

from stylerun.engine.run import Job, run  # noqa: E402
from stylerun.figures import contact_sheet  # noqa: E402
from stylerun.images.codec import save_image  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def parse_candidate(text: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = text.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return name, options


def pair_name(pair: str) -> str:
    photo, painting = pair.split(":")
    return f"{Path(photo).stem}+{Path(painting).stem}"


def rows(out: Path) -> list[dict[str, Any]]:
    log = out / "runs.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def sweep(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = {(r["candidate"], r["pair"], r["size"]) for r in rows(out)}
    judge = Judge()
    for text in args.candidates:
        name, options = parse_candidate(text)
        for pair in args.pairs.split(","):
            if (name, pair_name(pair), args.size) in done:
                continue
            photo, painting = pair.split(":")
            path = out / str(args.size) / name / f"{pair_name(pair)}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cpu, wall = cpu_seconds(), time.perf_counter()
            outcome = run(Job.of(photo, painting, size=args.size, **options))
            cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
            save_image(outcome.image, path)
            scores = judge.judge(path, photo, painting)
            row = {"candidate": name, "options": options, "pair": pair_name(pair), "size": args.size,
                   "cpu_s": round(cpu, 1), "wall_s": round(wall, 1), "iterations": outcome.iterations,
                   **scores.as_dict()}
            with open(out / "runs.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


def chosen(out: Path, names: str | None, sizes: str | None) -> list[dict[str, Any]]:
    """The runs of the candidates `names` (in that order) at `sizes` ("256,512"; None: every size)."""
    wanted = None if sizes is None else {int(v) for v in str(sizes).split(",")}
    picked = [r for r in rows(out) if (wanted is None or r["size"] in wanted)]
    if names:
        order = names.split(",")
        picked = sorted((r for r in picked if r["candidate"] in order), key=lambda r: order.index(r["candidate"]))
    return picked


def table(args: argparse.Namespace) -> None:
    picked = chosen(Path(args.out), args.candidates, args.size)
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in picked:
        groups.setdefault((r["candidate"], r["size"]), []).append(r)
    print("| candidate | size | pairs | wall s | CPU s | style | content | product | grain |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (name, size), group in groups.items():
        mean = {k: float(np.mean([r[k] for r in group])) for k in ("wall_s", "cpu_s", "style", "content",
                                                                   "product", "grain")}
        print(f"| {name} | {size} | {len(group)} | {mean['wall_s']:.0f} | {mean['cpu_s']:.0f} | "
              f"{mean['style']:.3f} | {mean['content']:.3f} | {mean['product']:.3f} | {mean['grain']:.2f} |")


def sheet(args: argparse.Namespace) -> None:
    out = Path(args.out)
    picked = chosen(out, args.candidates, args.size)
    pairs = sorted({(r["size"], r["pair"]) for r in picked})
    names = args.candidates.split(",")
    images, labels = [], []
    for size, pair in pairs:
        found = [next((r for r in picked if (r["size"], r["pair"], r["candidate"]) == (size, pair, name)), None)
                 for name in names]
        if None in found:  # a row of the sheet is one pair under every candidate, or none
            continue
        for name, row in zip(names, found, strict=True):
            picture = Image.open(out / str(row["size"]) / name / f"{pair}.png").convert("RGB")
            images.append(picture.resize((round(picture.width * args.height / picture.height), args.height),
                                         Image.Resampling.LANCZOS))
            labels.append([f"{name} {row['size']}px: {row['wall_s']:.0f} s ({row['cpu_s']:.0f} CPU s)",
                           f"style {row['style']:.3f} content {row['content']:.2f}", f"grain {row['grain']:.2f}"])
    contact_sheet(args.title or f"schedules, {', '.join(names)}", images, labels, len(names)).save(
        args.sheet, quality=85)
    print(args.sheet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("out")
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--pairs", required=True)
    p.add_argument("candidates", nargs="+")
    p.set_defaults(func=sweep)
    p = sub.add_parser("table")
    p.add_argument("out")
    p.add_argument("--candidates")
    p.add_argument("--size", help="sizes, e.g. 256,512 (default: all)")
    p.set_defaults(func=table)
    p = sub.add_parser("sheet")
    p.add_argument("out")
    p.add_argument("sheet")
    p.add_argument("--candidates", required=True)
    p.add_argument("--size", help="sizes, e.g. 256,512 (default: all)")
    p.add_argument("--height", type=int, default=150)
    p.add_argument("--title")
    p.set_defaults(func=sheet)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
