"""Replicate the figures of Gatys et al. as labelled contact sheets, with a Markdown report.

Four figures, each a grid of panels; every panel is one optimization from its own settings:

* ``fig1-content``: content reconstructions from white noise (alpha 1, beta 0), one
  panel per layer relu1_2 .. relu5_2 (2015 paper, Figure 1, bottom row);
* ``fig1-style``: style reconstructions from white noise (alpha 0, beta 1) on the layer
  subsets {relu1_1}, {relu1_1, relu2_1}, ... {relu1_1 .. relu5_1} (Figure 1, top row);
* ``fig3``: the content photo in the style of each style image, with the default
  settings (alpha 1e-6, beta 1, style relu1_1 .. relu5_1 at 0.2, content relu4_2);
* ``fig4``: the alpha/beta sweep of the 2016 paper's Figure 4 on the first style image,
  from white noise.

Each finished panel is ``DIR/panels/<name>.png`` plus ``<name>.json`` (its settings and
final losses). A panel whose two files exist with the same settings is not run again,
so an interrupted run resumes where it stopped. Each figure's panel list is kept in
``DIR/<figure>.json``; ``DIR/report.md`` is rebuilt from all of them after every run,
with ``DIR/notes.md`` (hand-written analysis), when present, appended.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from stylerun.engine.optimizers import Progress
from stylerun.engine.run import CallbackListener, Job, run
from stylerun.errors import InputError
from stylerun.files.atomic import atomic_write, write_bytes
from stylerun.files.hashing import file_sha256
from stylerun.files.limits import check_regular_file
from stylerun.images.codec import (
    MAX_PIXELS_ENV,
    check_size,
    fit_longest_side,
    max_pixels,
    open_image,
    save_image,
    to_uint8,
)
from stylerun.options import INITS, TransferOptions
from stylerun.version import __version__
from stylerun.vgg import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, format_layer_weights

FIGURES = ("fig1-content", "fig1-style", "fig3", "fig4")
#: alpha/beta of the sweep, content-heavy to style-heavy (beta = 1, alpha = ratio).
SWEEP_RATIOS = (1e2, 1e1, 1e0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8)
CONTENT_RECON_LAYERS = ("relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2")
STYLE_RECON_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

TITLES = {
    "fig1-content": "Figure 1, content reconstructions: alpha=1, beta=0, from white noise",
    "fig1-style": "Figure 1, style reconstructions: alpha=0, beta=1, from white noise",
    "fig3": "Figure 3, artworks: the original project's alpha=1e-6, beta=1",
    "fig4": "Figure 4 (2016), alpha/beta sweep, beta=1, from white noise",
}

# Contact-sheet geometry, in pixels.
PAD = 8
TITLE_H = 28
LABEL_LINE_H = 14
LABEL_LINES = 3
LABEL_H = LABEL_LINES * LABEL_LINE_H + 4
MAX_COLUMNS = 5


@dataclass(frozen=True)
class Panel:
    """One optimization: everything that decides its result, and its label."""

    figure: str
    name: str  # file stem in panels/
    label: str  # first label line: what varies across the figure
    content: str  # image paths
    style: str
    alpha: float
    beta: float
    content_layers: dict[str, float]
    style_layers: dict[str, float]
    init: str
    size: int
    iterations: int
    seed: int
    pooling: str = "max"

    def settings(self) -> dict:
        """The settings that identify the result: a panel is redone when they change."""
        s = asdict(self)
        s.pop("label")
        s["content"] = _file_id(self.content)
        s["style"] = _file_id(self.style)
        s["version"] = __version__
        return s

    def setting_text(self) -> str:
        init = "noise" if self.init == "random" else self.init
        return f"alpha={_g(self.alpha)} beta={_g(self.beta)} from {init}"


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    panels: tuple[Panel, ...]


@dataclass
class PanelRecord:
    """A finished panel, as stored in panels/<name>.json."""

    settings: dict
    content_loss: float
    style_loss: float
    loss: float
    iterations: int
    evaluations: int
    elapsed: float
    error: str | None = None
    extra: dict = field(default_factory=dict)


class FigureListener:
    """Progress hooks for `make_figures`; every method is optional (no-op here). Not the run engine's
    `Listener`: these events are the panels and sheets of a whole replication."""

    def start(self, figures: Sequence[Figure], todo: int) -> None: ...

    def panel_start(self, panel: Panel, index: int, total: int) -> None: ...

    def panel_skipped(self, panel: Panel, record: PanelRecord) -> None: ...

    def step(self, panel: Panel, progress: Progress) -> None: ...

    def panel_done(self, panel: Panel, record: PanelRecord) -> None: ...

    def sheet_done(self, figure: Figure, path: Path) -> None: ...


def _g(x: float) -> str:
    return f"{x:.3g}" if x else "0"


def _e(x: float) -> str:
    """Short loss text for labels: 4.05e10."""
    return f"{x:.2e}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-") if x else "0"


_FILE_IDS: dict[tuple[str, float, int], str] = {}


def _file_id(path: str) -> str:
    """Name and content hash of an input image, so a changed file redoes its panels."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_mtime, st.st_size)
    if key not in _FILE_IDS:
        _FILE_IDS[key] = f"{p.name}:{file_sha256(p)[:16]}"  # streamed: an input of any size costs 1 MiB
    return _FILE_IDS[key]


def parse_which(spec: str) -> tuple[str, ...]:
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise InputError(f"--which: give one or more of {', '.join(FIGURES)}")
    for item in items:
        if item not in FIGURES:
            raise InputError(f"--which: unknown figure '{item}'; use one or more of {', '.join(FIGURES)}")
    return tuple(f for f in FIGURES if f in items)


def plan(
    content: str | Path,
    styles: Sequence[str | Path],
    which: Sequence[str] = FIGURES,
    *,
    size: int = 256,
    iterations: int = 200,
    seed: int = 0,
    ratios: Sequence[float] = SWEEP_RATIOS,
    sweep_init: str = "random",
) -> list[Figure]:
    """The figures asked for, as panels; nothing is run."""
    if not styles:
        raise InputError("give at least one style image")
    if size < 32:
        raise InputError(f"--size must be at least 32 pixels, got {size}")
    if sweep_init not in INITS:
        raise InputError(f"unknown sweep init '{sweep_init}'; use one of: {', '.join(INITS)}")
    if iterations < 1:
        raise InputError(f"--iterations must be >= 1, got {iterations}")
    # The style is resized to the content's shape, except in fig1-style, where it is its own content.
    for path in [content, styles[0]] if "fig1-style" in which else [content]:
        check_size(*fit_longest_side(open_image(path).size, size), f"{path} at --size {size}")
    for path in styles:
        open_image(path)  # fail now on an unreadable style, not after an hour of other panels
    content, style0 = str(content), str(styles[0])
    common = {"size": size, "iterations": iterations, "seed": seed}
    figures = []
    if "fig1-content" in which:
        panels = tuple(
            Panel("fig1-content", f"fig1-content_{layer}", f"content {layer}", content, content, 1.0, 0.0,
                  {layer: 1.0}, {}, "random", **common)
            for layer in CONTENT_RECON_LAYERS
        )
        figures.append(Figure("fig1-content", TITLES["fig1-content"], panels))
    if "fig1-style" in which:
        panels = []
        for k in range(1, len(STYLE_RECON_LAYERS) + 1):
            layers = STYLE_RECON_LAYERS[:k]
            label = "style " + (layers[0] if k == 1 else f"{layers[0]}..{layers[-1]}")
            # The style image is its own "content" so the panel has the painting's shape.
            panels.append(Panel("fig1-style", f"fig1-style_{k}", label, style0, style0, 0.0, 1.0, {},
                                {name: 1.0 / k for name in layers}, "random", **common))
        figures.append(Figure("fig1-style", TITLES["fig1-style"], tuple(panels)))
    if "fig3" in which:
        panels = tuple(
            Panel("fig3", f"fig3_{i + 1}_{_stem(s)}", f"style {Path(s).stem}", content, str(s), 1e-6, 1.0,
                  dict(DEFAULT_CONTENT_LAYERS), dict(DEFAULT_STYLE_LAYERS), "content", **common)
            for i, s in enumerate(styles)
        )
        figures.append(Figure("fig3", TITLES["fig3"] + ", from the content photo", panels))
    if "fig4" in which:
        panels = tuple(
            Panel("fig4", f"fig4_{i + 1:02d}_{r:.0e}", f"alpha/beta {r:.0e}", content, style0, float(r), 1.0,
                  dict(DEFAULT_CONTENT_LAYERS), dict(DEFAULT_STYLE_LAYERS), sweep_init, **common)
            for i, r in enumerate(ratios)
        )
        title = TITLES["fig4"]
        if sweep_init != "random":
            title = title.replace("white noise", f"the {sweep_init} image")
        figures.append(Figure("fig4", title + f", style {Path(style0).stem}", panels))
    return figures


def _stem(path) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(path).stem)[:40]


def panel_paths(out: Path, panel: Panel) -> tuple[Path, Path]:
    base = out / "panels" / panel.name
    return base.with_suffix(".png"), base.with_suffix(".json")


def finished(out: Path, panel: Panel) -> PanelRecord | None:
    """The stored record when this panel is done with these exact settings, else None.

    The output folder is re-checked like any input: a record that is not a regular file,
    too large, malformed or wrongly typed, or an image that is not a decodable picture of
    the panel's size, means "not finished", and the panel is run again over it.
    """
    stored = _stored(out, panel)
    return None if stored is None else stored[0]


#: Panel records and manifests are a few kilobytes, notes.md a page or two; bigger files are not read.
MAX_TEXT_BYTES = 1 << 20


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63


def _number(value: object) -> bool:
    """A float (NaN and infinities included: a failed panel may store them) or a machine-sized int."""
    return isinstance(value, float) or _int(value)


def _text(value: object) -> bool:
    return isinstance(value, str)


def _dict(value: object) -> bool:
    return isinstance(value, dict)


def _weights(value: object) -> bool:
    return _dict(value) and all(_text(k) and _number(w) for k, w in value.items())  # type: ignore[union-attr]


_RECORD_FIELDS: dict[str, Callable[[object], bool]] = {
    "settings": _dict, "content_loss": _number, "style_loss": _number, "loss": _number, "iterations": _int,
    "evaluations": _int, "elapsed": _number, "error": lambda v: v is None or _text(v), "extra": _dict,
}
_PANEL_FIELDS: dict[str, Callable[[object], bool]] = {
    "name": _text, "label": _text, "content": _text, "style": _text, "alpha": _number, "beta": _number,
    "content_layers": _weights, "style_layers": _weights, "init": _text, "size": _int, "iterations": _int,
    "settings": _dict,
}


def _stored(out: Path, panel: Panel) -> tuple[PanelRecord, Image.Image] | None:
    """(record, image) of a panel finished with these settings and still intact, else None."""
    png, meta = panel_paths(out, panel)
    record = _read_record(meta)
    if record is None or record.settings != panel.settings():
        return None
    try:  # at most the panel's square, and its longer side what `load_image` at --size gives
        image = open_image(png, limit=panel.size * panel.size)
    except InputError:
        return None
    return (record, image) if max(image.size) == panel.size else None


def _read_record(path: Path) -> PanelRecord | None:
    data = _read_json(path)
    if not isinstance(data, dict) or set(data) - set(_RECORD_FIELDS):
        return None
    return PanelRecord(**data) if _typed(data, _RECORD_FIELDS, optional=("error", "extra")) else None


def _read_json(path: Path) -> object:
    """The JSON in `path`, or None when it is missing, not a regular file, over `MAX_TEXT_BYTES` or malformed."""
    text = _read_small(path)
    try:
        return None if text is None else json.loads(text)
    except (ValueError, RecursionError):
        return None


def _read_small(path: Path) -> str | None:
    """A text file of our output folder, or None when missing, not a regular file (a FIFO would block) or too big."""
    try:
        check_regular_file(path, InputError)
        with open(path, "rb") as f:
            data = f.read(MAX_TEXT_BYTES + 1)
    except (InputError, OSError):
        return None
    return data.decode("utf-8", "replace") if len(data) <= MAX_TEXT_BYTES else None


def _typed(data: object, fields: dict[str, Callable[[object], bool]], optional: Sequence[str] = ()) -> bool:
    """Whether `data` is a dict whose `fields` (all present, but for `optional` ones) pass their checks."""
    if not isinstance(data, dict):
        return False
    return all(check(data[key]) if key in data else key in optional for key, check in fields.items())


def panel_options(panel: Panel, device: str = "auto", threads: int | None = None) -> TransferOptions:
    """A panel as a set of transfer options for the run engine: at one scale and with no smoothing, as the paper
    optimized."""
    return TransferOptions(size=panel.size, alpha=panel.alpha, beta=panel.beta, content_layers=panel.content_layers,
                           style_layers=panel.style_layers, pooling=panel.pooling, init=panel.init,
                           iterations=panel.iterations, seed=panel.seed, device=device, threads=threads, scales=1,
                           smoothness=0.0)


def run_panel(
    panel: Panel,
    out: Path,
    *,
    device: str = "auto",
    threads: int | None = None,
    callback: Callable[[Progress], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> PanelRecord:
    """Optimize one panel and store its image and record. Ctrl-C, or `stop` returning True, ends the
    panel within the current evaluation and raises KeyboardInterrupt, storing nothing."""
    job = Job(panel.content, (panel.style,), panel_options(panel, device, threads))
    outcome = run(job, CallbackListener(callback), stop)
    if outcome.interrupted:
        raise KeyboardInterrupt
    image = to_uint8(outcome.image)
    # The losses of the image as saved (rounded to 0..255 integers), so the PNG reproduces them.
    loss = outcome.loss_object
    total, _ = loss.loss_and_grad(image.astype(np.float32))
    content_loss, style_loss = loss.last_terms
    record = PanelRecord(panel.settings(), content_loss, style_loss, total, outcome.iterations, outcome.evaluations,
                         round(outcome.elapsed, 2), outcome.error)
    png, meta = panel_paths(out, panel)
    png.parent.mkdir(parents=True, exist_ok=True)
    save_image(image, png)
    _write_text(meta, json.dumps(asdict(record), indent=1, default=_json_default) + "\n")
    return record


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(f"cannot store {type(x)}")


def _write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


# --- contact sheets ---------------------------------------------------------------------------


def _font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font, no size
        return ImageFont.load_default()


def grid(n: int, columns: int = MAX_COLUMNS) -> tuple[int, int]:
    """(columns, rows) of a sheet of n panels, at most `columns` a row."""
    columns = min(n, columns)
    return columns, math.ceil(n / columns)


def sheet_size(n: int, panel_size: tuple[int, int], columns: int = MAX_COLUMNS) -> tuple[int, int]:
    """(width, height) of the sheet: a title bar, then a grid of panels each with its label below."""
    (columns, rows), (w, h) = grid(n, columns), panel_size
    return PAD + columns * (w + PAD), TITLE_H + rows * (h + LABEL_H + PAD) + PAD


def panel_label(panel: Panel, record: PanelRecord | None) -> list[str]:
    lines = [panel.label, panel.setting_text()]
    if record is not None:
        lines.append(f"content {_e(record.content_loss)} style {_e(record.style_loss)}")
    return lines[:LABEL_LINES]


def contact_sheet(title: str, images: Sequence[Image.Image], labels: Sequence[Sequence[str]],
                  columns: int = MAX_COLUMNS) -> Image.Image:
    """Panels on a white sheet in a grid of at most `columns` a row, each labelled underneath, with a title on top.

    A sheet over `images.max_pixels()` is refused before it is allocated.
    """
    if not images:
        raise InputError("a contact sheet needs at least one panel")
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    columns, _ = grid(len(images), columns)
    width, height = sheet_size(len(images), (w, h), columns)
    limit = max_pixels()
    if width * height > limit:
        raise InputError(f"a {width}x{height} contact sheet is over the {limit:,} pixel limit; "
                         f"use a smaller --size, or raise the limit with {MAX_PIXELS_ENV}=N")
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    title_font = _fitting_font(draw, title, width - 2 * PAD)
    draw.text((PAD, 7), _fit(draw, title, title_font, width - 2 * PAD), fill="black", font=title_font)
    font = _font(11)
    for i, (im, lines) in enumerate(zip(images, labels, strict=True)):
        x = PAD + (i % columns) * (w + PAD)
        y = TITLE_H + (i // columns) * (h + LABEL_H + PAD)
        sheet.paste(im, (x + (w - im.width) // 2, y + (h - im.height) // 2))
        for k, line in enumerate(lines[:LABEL_LINES]):
            draw.text((x, y + h + 2 + k * LABEL_LINE_H), _fit(draw, line, font, w), fill="black", font=font)
    return sheet


def _fitting_font(draw: ImageDraw.ImageDraw, text: str, width: int, sizes: Sequence[int] = (14, 13, 12, 11, 10)):
    """The largest of `sizes` in which `text` fits `width` (a sheet of two panels is narrow), else the smallest."""
    for size in sizes:
        font = _font(size)
        if draw.textlength(text, font=font) <= width:
            break
    return font


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "\u2026" if len(text) > 2 else ""
    return text


def write_sheet(figure: Figure, out: Path) -> Path:
    """The figure's contact sheet from its stored panels, each re-checked (see `finished`)."""
    images, labels = [], []
    for panel in figure.panels:
        stored = _stored(out, panel)
        if stored is None:
            raise InputError(f"{panel_paths(out, panel)[0]}: panel is missing or damaged; "
                             "run the same command again to redo it")
        images.append(stored[1])
        labels.append(panel_label(panel, stored[0]))
    path = out / f"{figure.name}.png"
    sheet = contact_sheet(figure.title, images, labels)
    with atomic_write(path) as f:
        sheet.save(f, format="PNG", optimize=True)
    return path


# --- report -----------------------------------------------------------------------------------


def _manifest(figure: Figure) -> dict:
    return {"name": figure.name, "title": figure.title,
            "panels": [{**asdict(p), "settings": p.settings()} for p in figure.panels]}


def write_report(out: Path) -> Path:
    """DIR/report.md from every figure manifest in DIR (figures run earlier included).

    Manifests and records are re-checked (regular files, size, types): a damaged one is
    reported as such, or its panel as not run, rather than stopping the report.
    """
    lines = ["# Figure replication report", "",
             f"Generated by `stylerun figures` (stylerun {__version__}). Losses are those of each panel's own "
             "objective (`content = sum_l w_l 1/2 sum (F-P)^2`, `style = sum_l w_l sum ((G-A)/(2NM))^2`), "
             "evaluated on the saved 8-bit image. Pooling: max. Seeded white noise is uniform 0..255.", ""]
    for name in FIGURES:
        path = out / f"{name}.json"
        if not path.exists():
            continue
        manifest = _read_json(path)
        if not _manifest_ok(manifest):
            lines += [f"## {name}", "", f"`{name}.json` is damaged; run the figure again to rebuild it.", ""]
            continue
        lines += [f"## {manifest['title']}", "", f"![{name}]({name}.png)", ""]
        lines += ["| panel | content | style | alpha | beta | alpha/beta | layers | init | size | iterations run/asked "
                  "| evals | time s | final content loss | final style loss | alpha*content / beta*style |",
                  "|" + " --- |" * 15]
        lines += [_report_row(out, p) for p in manifest["panels"]]
        lines.append("")
    notes = _read_small(out / "notes.md")
    if notes is not None:  # hand-written analysis, kept across re-runs
        lines += [notes.rstrip(), ""]
    path = out / "report.md"
    _write_text(path, "\n".join(lines))
    return path


def _manifest_ok(manifest: object) -> bool:
    """A figure manifest as `_manifest` writes it: a title, and panels whose fields have their types."""
    if not _typed(manifest, {"title": _text, "panels": lambda v: isinstance(v, list)}):
        return False
    return all(_typed(p, _PANEL_FIELDS) for p in manifest["panels"])  # type: ignore[index]


def _report_row(out: Path, p: dict) -> str:
    """One panel's table row, from its manifest entry and its record when that is intact and current."""
    rec = _read_record(out / "panels" / f"{Path(p['name']).name}.json")
    if rec is not None and rec.settings != p["settings"]:
        rec = None
    a, b = p["alpha"], p["beta"]
    layers = []
    if a and p["content_layers"]:
        layers.append("content " + format_layer_weights(p["content_layers"]))
    if b and p["style_layers"]:
        layers.append("style " + format_layer_weights(p["style_layers"]))
    ratio = _g(a / b) if b else "inf"
    if rec is None:
        tail = [f"0/{p['iterations']}", "-", "-", "not run", "-", "-"]
    else:
        c, s = rec.content_loss, rec.style_loss
        balance = _g(a * c / (b * s)) if b * s > 0 else "-"
        note = f" ({rec.error})" if rec.error else ""
        tail = [f"{rec.iterations}/{p['iterations']}{note}", str(rec.evaluations), f"{rec.elapsed:.0f}",
                f"{c:.4g}", f"{s:.4g}", balance]
    return "| " + " | ".join([p["label"], Path(p["content"]).name, Path(p["style"]).name, _g(a), _g(b), ratio,
                              "; ".join(layers), p["init"], str(p["size"]), *tail]) + " |"


# --- the whole run ----------------------------------------------------------------------------


def make_figures(
    figures: Sequence[Figure],
    out: str | Path,
    *,
    device: str = "auto",
    threads: int | None = None,
    listener: FigureListener | None = None,
    stop: Callable[[], bool] | None = None,
) -> list[Path]:
    """Run every unfinished panel, then write each figure's sheet and the report; returns the sheets.

    `stop` (a callable returning True, as `signals.StopSignals.requested`) ends the running panel
    within its current evaluation and raises KeyboardInterrupt; finished panels are kept.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "panels").mkdir(exist_ok=True)
    listener = listener or FigureListener()
    panels = [p for f in figures for p in f.panels]
    todo = [p for p in panels if finished(out, p) is None]
    listener.start(figures, len(todo))
    for figure in figures:
        _write_text(out / f"{figure.name}.json", json.dumps(_manifest(figure), indent=1) + "\n")
    index = 0
    for panel in panels:
        record = finished(out, panel)
        if record is not None:
            listener.panel_skipped(panel, record)
            continue
        if stop is not None and stop():
            raise KeyboardInterrupt  # before the next panel loads its model
        index += 1
        listener.panel_start(panel, index, len(todo))
        record = run_panel(panel, out, device=device, threads=threads,
                           callback=lambda p, panel=panel: listener.step(panel, p), stop=stop)
        listener.panel_done(panel, record)
    sheets = []
    for figure in figures:
        path = write_sheet(figure, out)
        listener.sheet_done(figure, path)
        sheets.append(path)
    write_report(out)
    return sheets
