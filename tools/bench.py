"""Benchmark stylerun's loss-and-gradient evaluation, its L-BFGS-B loop and its memory.

    python tools/bench.py                          # 128, 256, 512 px, 5 repeats, all cores
    python tools/bench.py --sizes 256,512 --threads 2 --repeats 7
    /work/venv-torch/bin/python tools/bench.py --threads 2 --compare-torch --profile

Prints, per size: seconds per loss-and-gradient evaluation (median of --repeats, after
one warm-up), analytic GFLOP/s and its share of this machine's float32 matmul peak
(numpy, measured in the same run), L-BFGS-B seconds per iteration of a short
`optimizers.optimize` run, and the process's peak RSS so far.

With --compare-torch (needs torch importable; skipped cleanly otherwise) the same loss in
PyTorch (tools/torch_reference.py) is timed on the same images with the same threads,
*alternating* with stylerun run by run, and the medians and ratios are printed. Peak RSS,
start-up and L-BFGS bookkeeping of a whole transfer are measured per implementation in
separate child processes (each a fresh interpreter, so one's memory never counts for the
other). --profile aggregates onnxruntime's profiler JSON by op type at the largest size.

Only ratios from one run are meaningful on a shared machine: the absolute figures move
with whatever else runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="128,256,512", help="comma-separated longest sides in px")
    ap.add_argument("--repeats", type=int, default=5, help="timed evaluations per size and implementation")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores of this process)")
    ap.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--aspect", default="square", choices=("square", "4:3"), help="content shape")
    ap.add_argument("--iterations", type=int, default=5, help="L-BFGS-B iterations of the short optimize() run")
    ap.add_argument("--content", default=str(EXAMPLES / "astronaut.jpg"))
    ap.add_argument("--style", default=str(EXAMPLES / "starry_night.jpg"))
    ap.add_argument("--graph", default="optimized", choices=("optimized", "unoptimized"),
                    help="unoptimized: the reference graph with every autodiff optimization off")
    ap.add_argument("--variants", help="A/B mode: 'NAME:key=val,key=val;NAME:...' alternated run by run; keys: "
                    "optimize=0|1, conv=conv|conv_transpose, relu=where|sign|hardsigmoid, gram=single|generic, "
                    "pool=fused|separate, "
                    "level=disable|basic|extended|all, arena=0|1, pattern=0|1, spin=0|1")
    ap.add_argument("--session", default="", help="session settings for every stylerun run, e.g. 'arena=0,spin=0' "
                    "(keys as in --variants)")
    ap.add_argument("--compare-torch", action="store_true", help="time the PyTorch reference alongside")
    ap.add_argument("--profile", action="store_true", help="onnxruntime per-op-type profile at the largest size")
    ap.add_argument("--transfer", action="store_true",
                    help="whole-transfer child processes (peak RSS, start-up, bookkeeping); implied by --compare-torch")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--child", choices=("stylerun", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--child-size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


ARGS = _parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads:
    # BLAS and OpenMP pools read these once, at load: set them before numpy/torch import.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from stylerun.network.loss_graph import LayerSet, style_target_name  # noqa: E402
from stylerun.vgg import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, truncated  # noqa: E402


def peak_rss_mib() -> float:
    """This process's peak resident set size, in MiB.

    /proc's VmHWM first: Linux carries ru_maxrss across fork and exec, so a child started
    from a big parent would report the parent's peak; VmHWM starts afresh at exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def crop_to_aspect(img: Image.Image, aspect: str) -> Image.Image:
    ratio = 1.0 if aspect == "square" else 4.0 / 3.0
    w, h = img.size
    if w / h > ratio:
        nw = int(round(h * ratio))
        return img.crop(((w - nw) // 2, 0, (w - nw) // 2 + nw, h))
    nh = int(round(w / ratio))
    return img.crop((0, (h - nh) // 2, w, (h - nh) // 2 + nh))


def analytic_flops(layers: LayerSet, height: int, width: int) -> dict[str, float]:
    """FLOPs of one loss-and-gradient evaluation, counted as 2 per multiply-add.

    Forward convs to the deepest layer, the data-gradient conv of each of them (the
    gradient goes to the image, so conv1_1's too), and per style layer the Gram product
    F F^T (2 N^2 M) plus its adjoint 2 dG F (2 N^2 M, one product: dG is symmetric).
    Elementwise ops, pooling and the loss reductions are not counted.
    """
    fwd = bwd = gram = 0.0
    h, w = height, width
    for layer in truncated(layers.content + layers.style):
        if layer.kind == "conv":
            f = 2.0 * layer.channels * layer.in_channels * 9 * h * w
            fwd += f
            bwd += f
        elif layer.kind == "pool":
            h, w = h // 2, w // 2
        if layer.name in layers.style:
            gram += 2 * (2.0 * layer.channels**2 * h * w)
    return {"conv_forward": fwd, "conv_backward": bwd, "gram": gram, "total": fwd + bwd + gram}


def matmul_gflops(n: int = 2048, tries: int = 3) -> float:
    """Best float32 GEMM rate numpy reaches here now (2 n^3 FLOPs per product)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(tries):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best / 1e9


def load_images(args, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Content cropped to the aspect and scaled to `size`; style resized to match."""
    from stylerun.images.codec import as_image, fit_longest_side, resize, to_array

    content = crop_to_aspect(as_image(args.content), args.aspect)
    content = resize(content, fit_longest_side(content.size, size))
    style = resize(as_image(args.style), content.size)
    return to_array(content), to_array(style)


def export_unoptimized(layers: LayerSet, directory: Path) -> Path:
    """The loss model with every autodiff optimization switched off, for --graph unoptimized."""
    from stylerun.network.autodiff import REFERENCE
    from stylerun.network.export import export_vgg
    from stylerun.weights.bundled import load_bundled

    return export_vgg(load_bundled(), layers, directory / "unoptimized.onnx", REFERENCE).loss


def make_stylerun_loss(args, content, style, threads, model=None):
    from stylerun.engine.loss import StyleLoss

    return StyleLoss(content, style, size=None, device=args.device, threads=threads or None, model=model,
                     session=args.session_settings)


def make_torch_loss(content, style, threads):
    from torch_reference import TorchLoss

    return TorchLoss(content, style, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, threads=threads or None)


def timed(fn, *a):
    t = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - t, out


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# --- A/B variants -------------------------------------------------------------------------

_GRAPH_KEYS = ("conv", "relu", "gram", "pool")
_SESSION_KEYS = {"level": "level", "arena": "arena", "pattern": "mem_pattern", "spin": "spinning"}


def parse_variants(spec: str) -> dict[str, dict[str, str]]:
    variants = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, _, opts = part.partition(":")
        kv = dict(o.split("=", 1) for o in opts.split(",") if o.strip())
        unknown = set(kv) - set(_GRAPH_KEYS) - set(_SESSION_KEYS) - {"optimize"}
        if unknown:
            raise SystemExit(f"--variants: unknown key(s) {sorted(unknown)}")
        variants[name.strip()] = kv
    return variants


def session_settings(opts: dict[str, str]):
    """The measured session settings with the keys of `opts` (level=..., arena=0|1, ...) changed."""
    from stylerun.network.sessions import MEASURED

    changes = {_SESSION_KEYS[k]: (v if k == "level" else v == "1") for k, v in opts.items() if k in _SESSION_KEYS}
    return dataclasses.replace(MEASURED, **changes)


def make_variant_loss(opts: dict[str, str], content, style, threads, directory: Path, device: str):
    """A StyleLoss on a graph exported with the variant's autodiff flavours and session settings."""
    from stylerun.engine.loss import StyleLoss
    from stylerun.network.autodiff import FASTEST, REFERENCE
    from stylerun.network.export import export_vgg
    from stylerun.weights.bundled import load_bundled

    layers = LayerSet.of(DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS)
    base = FASTEST if opts.get("optimize", "1") == "1" else REFERENCE
    flavours = dataclasses.replace(base, **{k: v for k, v in opts.items() if k in _GRAPH_KEYS})
    path = directory / f"variant{len(list(directory.iterdir()))}.onnx"
    export_vgg(load_bundled(), layers, path, flavours)
    return StyleLoss(content, style, size=None, device=device, threads=threads, model=path,
                     session=session_settings(opts))


def run_variants(args, threads: int) -> int:
    variants = parse_variants(args.variants)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print(f"# stylerun bench A/B: {' '.join(sys.argv[1:])}")
    print(f"# {machine_description(False)}; threads {threads}")
    print(f"{'size':>9} " + " ".join(f"{n:>14}" for n in variants) + "   (median s/eval; ratio to the first; "
          "max rel. grad diff to the first)")
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            content, style = load_images(args, size)
            x = content + np.random.default_rng(1).uniform(-8, 8, content.shape).astype(np.float32)
            losses = {n: make_variant_loss(o, content, style, threads, Path(tmp), args.device)
                      for n, o in variants.items()}
            first = {n: lo.loss_and_grad(x) for n, lo in losses.items()}
            times: dict[str, list[float]] = {n: [] for n in variants}
            for _ in range(args.repeats):
                for n, lo in losses.items():
                    times[n].append(timed(lo.loss_and_grad, x)[0])
            med = {n: statistics.median(t) for n, t in times.items()}
            base = next(iter(variants))
            print(f"{content.shape[1]:>4}x{content.shape[0]:<4} "
                  + " ".join(f"{med[n]:>8.4f} {med[n] / med[base]:>5.3f}" for n in variants))
            print(" " * 10 + " ".join(f"{rel_err(first[n][1], first[base][1]):>14.2e}" for n in variants))
            del losses
    return 0


# --- profiling ---------------------------------------------------------------------


def profile_by_op(args, content, style, threads, model_path=None, runs: int = 3) -> dict[str, float]:
    """Mean milliseconds per evaluation spent in each ONNX op type (onnxruntime profiler)."""
    from stylerun.network import sessions as runtime
    from stylerun.network.export import ModelFiles, cached_export, read_layers, targets_path
    from stylerun.network.loss_graph import content_target_name

    layers = LayerSet.of(DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS)
    files = cached_export(layers) if model_path is None else ModelFiles(
        Path(model_path), targets_path(Path(model_path)), read_layers(model_path))
    with tempfile.TemporaryDirectory() as tmp:
        model = runtime.LossModel(files, args.device, threads or None, args.session_settings,
                                  profile_prefix=str(Path(tmp) / "ort"))
        t_c, t_s = model.targets(content), model.targets(style)
        targets = {content_target_name(n): t_c[content_target_name(n)] for n in layers.content}
        targets.update({style_target_name(n): t_s[style_target_name(n)] for n in layers.style})
        model.bind(targets, [DEFAULT_CONTENT_LAYERS[n] for n in layers.content],
                   [DEFAULT_STYLE_LAYERS[n] for n in layers.style], 1e-6, 1.0)
        for _ in range(runs + 1):
            model.loss_and_grad(content)
        events = json.loads(Path(model.session.end_profiling()).read_text())
    # skip the first (warm-up) run: kernel events before the end of the first model_run
    model_runs = sorted((ev["ts"] + ev["dur"]) for ev in events if ev.get("name") == "model_run")
    after = model_runs[0] if model_runs else -1
    by_op: dict[str, float] = {}
    for ev in events:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time") and ev["ts"] > after:
            op = ev.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + ev["dur"] / 1000.0
    return {op: ms / runs for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])}


# --- whole-transfer children -------------------------------------------------------------


def parse_session(spec: str):
    """--session level=...,arena=0|1,... as session settings."""
    opts = dict(item.partition("=")[::2] for item in filter(None, (i.strip() for i in spec.split(","))))
    unknown = set(opts) - set(_SESSION_KEYS)
    if unknown:
        raise SystemExit(f"--session: unknown key(s) {sorted(unknown)}")
    return session_settings(opts)


def child(args) -> None:
    """One whole transfer in this fresh process; prints one JSON line."""
    from stylerun.engine.optimizers import optimize

    size = args.child_size
    content, style = load_images(args, size)
    t0 = time.perf_counter()
    if args.child == "stylerun":
        loss = make_stylerun_loss(args, content, style, args.threads, model=args.model)
    else:
        loss = make_torch_loss(content, style, args.threads)
    startup = time.perf_counter() - t0
    in_eval = [0.0]
    if args.child == "stylerun":
        session = loss.model.session
        run = session.run_with_iobinding

        def run_timed(binding, *a, **k):
            t = time.perf_counter()
            out = run(binding, *a, **k)
            in_eval[0] += time.perf_counter() - t
            return out

        session.run_with_iobinding = run_timed
    else:
        inner = loss.loss_and_grad

        def lg_timed(x):
            t = time.perf_counter()
            out = inner(x)
            in_eval[0] += time.perf_counter() - t
            return out

        loss.loss_and_grad = lg_timed
    t1 = time.perf_counter()
    first = loss.loss_and_grad(content)
    first_eval = time.perf_counter() - t1
    in_eval[0] = 0.0
    t2 = time.perf_counter()
    result = optimize(loss, content.copy(), args.iterations)
    wall = time.perf_counter() - t2
    print(json.dumps({
        "impl": args.child, "size": size, "startup_s": startup, "first_eval_s": first_eval,
        "iterations": result.iterations, "evaluations": result.evaluations, "wall_s": wall,
        "s_per_iter": wall / max(result.iterations, 1), "in_eval_s": in_eval[0],
        "overhead_frac": 1.0 - in_eval[0] / wall if wall else 0.0,
        "peak_rss_mib": peak_rss_mib(), "loss": first[0],
    }))


def run_child(args, impl: str, size: int, model=None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", impl, "--child-size", str(size),
           "--threads", str(args.threads), "--device", args.device, "--aspect", args.aspect,
           "--iterations", str(args.iterations), "--content", args.content, "--style", args.style]
    if model:
        cmd += ["--model", str(model)]
    if args.session:
        cmd += ["--session", args.session]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"child {impl} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- main ----------------------------------------------------------------------------------


def machine_description(compare: bool) -> str:
    import onnxruntime as ort
    import scipy

    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        mem_gib = int(mem.split()[1]) / 1024**2
    except (OSError, StopIteration):
        mem_gib = float("nan")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [f"cpu: {model}, {cores} cores, {mem_gib:.1f} GiB",
             f"onnxruntime {ort.__version__}, numpy {np.__version__}, scipy {scipy.__version__}"]
    if compare:
        import torch

        parts[-1] += f", torch {torch.__version__}"
    return "; ".join(parts)


def main(args) -> int:
    args.session_settings = parse_session(args.session)
    if args.child:
        child(args)
        return 0
    from stylerun.engine.optimizers import optimize
    from stylerun.network.sessions import default_threads

    threads = args.threads or default_threads()
    args.threads = threads
    if args.variants:
        return run_variants(args, threads)
    compare = args.compare_torch
    if compare and not torch_available():
        print("torch is not importable here: skipping --compare-torch "
              "(run with /work/venv-torch/bin/python, see docs/performance.md)")
        compare = False
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    layers = LayerSet.of(DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS)
    print(f"# stylerun bench: {' '.join(sys.argv[1:]) or '(defaults)'}")
    print(f"# {machine_description(compare)}")
    print(f"# threads {threads}, device {args.device}, graph {args.graph}, content {args.aspect}, "
          f"layers content={','.join(layers.content)} style={','.join(layers.style)}")

    tmp = tempfile.TemporaryDirectory()
    model_path = None
    if args.graph == "unoptimized":
        model_path = export_unoptimized(layers, Path(tmp.name))
    else:
        from stylerun.network.export import cached_export

        cached_export(layers)  # make sure the cache is warm: start-up is measured with a cached model

    results: dict = {"threads": threads, "sizes": {}, "machine": machine_description(compare)}
    peak = 0.0
    for size in sizes:
        content, style = load_images(args, size)
        h, w = content.shape[:2]
        flops = analytic_flops(layers, h, w)
        peak = max(peak, matmul_gflops())
        t_start, loss = timed(make_stylerun_loss, args, content, style, threads, model_path)
        tl = make_torch_loss(content, style, threads) if compare else None
        x = content + np.random.default_rng(1).uniform(-8, 8, content.shape).astype(np.float32)
        ours_first = loss.loss_and_grad(x)
        row: dict = {"h": h, "w": w, "gflop": flops["total"] / 1e9, "startup_s": t_start}
        if tl is not None:
            ref_first = tl.loss_and_grad(x)
            row["loss_rel_err"] = abs(ours_first[0] - ref_first[0]) / abs(ref_first[0])
            row["grad_rel_err"] = rel_err(ours_first[1], ref_first[1])
        ours, ref = [], []
        for _ in range(args.repeats):  # alternate, so load from others hits both alike
            ours.append(timed(loss.loss_and_grad, x)[0])
            if tl is not None:
                ref.append(timed(tl.loss_and_grad, x)[0])
        peak = max(peak, matmul_gflops())
        row["s_per_eval"] = statistics.median(ours)
        row["gflops"] = flops["total"] / 1e9 / row["s_per_eval"]
        if ref:
            row["torch_s_per_eval"] = statistics.median(ref)
            row["ratio"] = row["s_per_eval"] / row["torch_s_per_eval"]
            row["torch_gflops"] = flops["total"] / 1e9 / row["torch_s_per_eval"]
        if args.iterations:
            t, res = timed(optimize, loss, content.copy(), args.iterations)
            row["lbfgs_s_per_iter"] = t / max(res.iterations, 1)
            row["lbfgs_evals_per_iter"] = res.evaluations / max(res.iterations, 1)
        row["peak_rss_mib"] = peak_rss_mib()
        results["sizes"][size] = row
        del loss, tl
    results["matmul_peak_gflops"] = peak

    print(f"# numpy float32 matmul peak (best of 2048^3 products, interleaved): {peak:.1f} GFLOP/s")
    head = f"{'size':>9} {'GFLOP':>6} {'s/eval':>8} {'GFLOP/s':>8} {'%peak':>6}"
    if compare:
        head += f" {'torch s':>8} {'t GFLOP/s':>9} {'t %peak':>7} {'ratio':>6} {'grad err':>9}"
    head += f" {'lbfgs s/it':>10} {'ev/it':>5} {'start s':>7} {'RSS MiB':>8}"
    print(head)
    for r in results["sizes"].values():
        line = (f"{r['w']:>4}x{r['h']:<4} {r['gflop']:>6.1f} {r['s_per_eval']:>8.4f} {r['gflops']:>8.1f} "
                f"{100 * r['gflops'] / peak:>5.1f}%")
        if compare:
            line += (f" {r['torch_s_per_eval']:>8.4f} {r['torch_gflops']:>9.1f} {100 * r['torch_gflops'] / peak:>6.1f}%"
                     f" {r['ratio']:>6.3f} {r['grad_rel_err']:>9.2e}")
        nan = float("nan")
        line += (f" {r.get('lbfgs_s_per_iter', nan):>10.4f} {r.get('lbfgs_evals_per_iter', nan):>5.2f}"
                 f" {r['startup_s']:>7.3f} {r['peak_rss_mib']:>8.0f}")
        print(line)
    print("# s/eval, torch s: medians of alternating runs; ratio = stylerun / torch (lower is better); "
          "RSS: this process's peak so far")

    if args.profile:
        content, style = load_images(args, sizes[-1])
        by_op = profile_by_op(args, content, style, threads, model_path)
        total = sum(by_op.values())
        results["profile_ms_per_eval"] = by_op
        print(f"# onnxruntime profile at {sizes[-1]} px, ms per evaluation by op type (sum {total:.1f} ms)")
        for op, ms in by_op.items():
            if ms / total >= 0.001:
                print(f"{op:>20} {ms:>9.2f} ms {100 * ms / total:>5.1f}%")

    if compare or args.transfer:
        size = sizes[-1]
        impls = ["stylerun", "torch"] if compare else ["stylerun"]
        children = {impl: run_child(args, impl, size, model_path) for impl in impls}
        results["transfer"] = children
        print(f"# whole transfer at {size} px, {args.iterations} L-BFGS-B iterations, one fresh process each")
        print(f"{'impl':>9} {'peak RSS MiB':>12} {'start-up s':>10} {'1st eval s':>10} {'s/iter':>8} "
              f"{'evals':>5} {'outside eval':>12}")
        for impl, c in children.items():
            print(f"{impl:>9} {c['peak_rss_mib']:>12.0f} {c['startup_s']:>10.3f} {c['first_eval_s']:>10.3f} "
                  f"{c['s_per_iter']:>8.3f} {c['evaluations']:>5} {100 * c['overhead_frac']:>11.1f}%")
        if compare:
            ratio = children["stylerun"]["peak_rss_mib"] / children["torch"]["peak_rss_mib"]
            results["rss_ratio"] = ratio
            print(f"# peak RSS ratio stylerun / torch: {ratio:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
