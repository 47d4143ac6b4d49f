"""The static site: page, worker, optimizer, onnxruntime-web, the coded models and config.json.

Everything the page needs is written into one folder, so any static file server (or
`stylerun serve` at /local) serves it with nothing loaded from another host. The page's
defaults come from here, at export time: the transfer options' defaults, the engine's
coarse-to-fine plan (`engine.run.plan_of`) and the style-strength calibration (`strength`), so a
browser run means what a CLI run with the same numbers means.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from stylerun.engine import strength
from stylerun.engine.run import plan_of
from stylerun.engine.schedule import COARSEST, MAX_SCALES
from stylerun.errors import InputError
from stylerun.files.atomic import write_bytes
from stylerun.images.codec import MIN_SIDE
from stylerun.network.cache import cache_dir
from stylerun.network.export import GRAPH_VERSION
from stylerun.network.loss_graph import LayerSet
from stylerun.options import DEFAULT_STRENGTH, TransferOptions
from stylerun.version import __version__
from stylerun.web.model import LOSS_FILE, TARGETS_FILE, export_browser_models

#: The page, its worker, optimizer and styles, and onnxruntime-web (built from web/ by `npm run build`).
STATIC = Path(__file__).resolve().parent / "static"
#: The largest output side the page offers: a 512 px evaluation of VGG19 to relu5_1 and its L-BFGS
#: history take about 1.5 GB in a tab, near what browsers give one.
MAX_SIZE = 512
#: The bundled example pair `index.html?demo` runs, and the demo's size and iterations.
DEMO = {"content": "chelsea.jpg", "style": "starry_night.jpg", "size": 128, "iterations": 10}


def example_path(name: str) -> Path:
    """A bundled example image: inside the installed wheel, or in the source tree's examples/."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "examples" / name, package.parent / "examples" / name):
        if candidate.is_file():
            return candidate
    raise InputError(f"example image {name} not found; reinstall stylerun")


def ort_version() -> str:
    """The vendored onnxruntime-web's version (written by web/'s build)."""
    return (STATIC / "ort" / "VERSION").read_text().strip()


def site_config(layers: LayerSet, options: TransferOptions, models: dict[str, int]) -> dict[str, Any]:
    """config.json: what the page needs to know, derived from the engine rather than copied."""
    size = min(options.size or MAX_SIZE, MAX_SIZE)
    return {
        "stylerun": __version__,
        "onnxruntime_web": ort_version(),
        "models": models,
        "content_layers": list(layers.content),
        "content_weights": [options.content_layers.get(n, 0.0) for n in layers.content],
        "style_layers": list(layers.style),
        "style_weights": [options.style_layers.get(n, 0.0) for n in layers.style],
        "defaults": {"size": size, "iterations": options.iterations, "scales": options.scales,
                     "style_strength": DEFAULT_STRENGTH if options.style_strength is None else options.style_strength,
                     "smoothness": options.smoothing() or 0.0, "init": options.init,
                     "lbfgs_memory": options.lbfgs_memory},
        "schedule": [list(stage) for stage in plan_of(options, size)],
        "schedule_settings": {"ratio": options.scale_ratio, "split": options.scale_split, "coarsest": COARSEST,
                              "maxScales": MAX_SCALES, "minSide": MIN_SIDE},
        "max_size": MAX_SIZE,
        "min_side": MIN_SIDE,
        "strength": {"centre": strength.CENTRE, "slope": strength.SLOPE,
                     "reference_pixels": strength.REFERENCE_PIXELS, "span": strength.SPAN},
        "demo": {**DEMO, "content": f"examples/{DEMO['content']}", "style": f"examples/{DEMO['style']}"},
    }


def check_outdir(outdir: Path, force: bool) -> None:
    """Refuse an OUTDIR that is a file, or a folder with something in it unless `force`."""
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir} is a file, not a folder; give a new or empty folder")
    if outdir.is_dir() and any(outdir.iterdir()) and not force:
        raise InputError(f"{outdir} is not empty; give a new or empty folder, or --force to write into it")


def export_site(outdir: str | Path, *, force: bool = False, options: TransferOptions | None = None) -> dict[str, Any]:
    """Write the site into `outdir` (made if missing) and return its config.

    `options` (default: the transfer defaults) give the layers, their weights and the
    page's defaults. Existing files of the same names are replaced when `force` is given.
    """
    outdir = Path(outdir)
    check_outdir(outdir, force)
    options = options or TransferOptions()
    layers = LayerSet.of(options.content_layers, options.style_layers, options.pooling,
                         swap_red_blue=options.swap_red_blue)
    (outdir / "models").mkdir(parents=True, exist_ok=True)
    (outdir / "examples").mkdir(exist_ok=True)
    shutil.copytree(STATIC, outdir, dirs_exist_ok=True)
    for name in (DEMO["content"], DEMO["style"]):
        shutil.copyfile(example_path(name), outdir / "examples" / name)
    files = export_browser_models(outdir / "models", layers, options.weights)
    models = {"loss": f"models/{LOSS_FILE}", "targets": f"models/{TARGETS_FILE}",
              "bytes": files.loss.stat().st_size + files.targets.stat().st_size}
    config = site_config(layers, options, models)
    write_bytes(outdir / "config.json", (json.dumps(config, indent=1) + "\n").encode())
    return config


def cached_site() -> Path:
    """The default site, exported once into the model cache (what `stylerun serve` shows at /local).

    Keyed by stylerun's and the graph's version and the static files' content, so an
    upgrade exports afresh; written to a temporary folder first and renamed, so a site in
    the cache is always whole.
    """
    digest = hashlib.sha256(f"{__version__}|{GRAPH_VERSION}".encode())
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(STATIC).as_posix().encode() + b"\0" + path.read_bytes())
    site = cache_dir() / "web" / digest.hexdigest()[:20]
    if not (site / "config.json").is_file():
        site.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".site-", dir=site.parent))
        try:
            export_site(work, force=True)
            os.replace(work, site)
        except OSError:
            if not (site / "config.json").is_file():  # not another process that got there first
                raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return site
