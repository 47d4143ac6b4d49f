"""`stylerun figures`: contact sheets, the report, and resuming finished panels (tiny sizes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from stylerun import figures
from stylerun.cli.app import app
from stylerun.errors import InputError


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A synthetic 'photo' and two 'paintings', so the test needs no image files."""
    folder = tmp_path_factory.mktemp("figure-inputs")
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:60, 0:80]
    photo = np.stack([x * 3, y * 4, (x + y) * 2], axis=-1) % 256
    photo[20:40, 30:50] = (200, 40, 40)
    paths = {"content": folder / "photo.png", "a": folder / "waves.png", "b": folder / "dots.png"}
    Image.fromarray(photo.astype(np.uint8)).save(paths["content"])
    waves = (127 + 120 * np.sin(x[..., None] / 3.0 + y[..., None] / 5.0 + np.arange(3))).astype(np.uint8)
    Image.fromarray(waves).save(paths["a"])
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(paths["b"])
    return paths


class Counter(figures.FigureListener):
    def __init__(self):
        self.steps, self.ran, self.skipped = 0, [], []

    def step(self, panel, progress):
        self.steps += 1

    def panel_done(self, panel, record):
        self.ran.append(panel.name)

    def panel_skipped(self, panel, record):
        self.skipped.append(panel.name)


def _label_has_ink(sheet: np.ndarray, x: int, y: int, w: int) -> bool:
    strip = sheet[y: y + figures.LABEL_H, x: x + w]
    return bool((strip < 128).any())


def test_figures_command_sheets_report_and_resume(images, tmp_path):
    out = tmp_path / "figs"
    args = ["figures", str(images["content"]), str(images["a"]), str(images["b"]), "--out", str(out),
            "--size", "48", "--iterations", "2", "--which", "fig3,fig4", "--ratios", "1e-2,1e-6,1e-8", "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    # Figure 3: one panel per style; Figure 4: one per ratio.
    for name, n in (("fig3", 2), ("fig4", 3)):
        pw, ph = Image.open(next((out / "panels").glob(f"{name}_*.png"))).size
        assert (pw, ph) == (48, 36)
        sheet = Image.open(out / f"{name}.png")
        columns, rows = figures.grid(n)
        assert (columns, rows) == (n, 1)
        assert sheet.size == (figures.PAD + n * (pw + figures.PAD),
                              figures.TITLE_H + ph + figures.LABEL_H + 2 * figures.PAD)
        pixels = np.asarray(sheet.convert("L"))
        for i in range(n):
            x = figures.PAD + i * (pw + figures.PAD)
            assert _label_has_ink(pixels, x, figures.TITLE_H + ph + 1, pw), f"{name} panel {i} has no label"
        assert len(list((out / "panels").glob(f"{name}_*.json"))) == n

    report = (out / "report.md").read_text()
    for text in ("Figure 3", "Figure 4", "waves.png", "dots.png", "1e-06", "1e-08", "relu4_2:1",
                 "relu1_1:0.2,relu2_1:0.2,relu3_1:0.2,relu4_1:0.2,relu5_1:0.2", "alpha/beta", "2/2"):
        assert text in report, text
    rows = [line for line in report.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 2 + 5  # two header rows, five panels
    record = json.loads(next((out / "panels").glob("fig4_*.json")).read_text())
    assert record["content_loss"] > 0 and record["style_loss"] > 0 and record["iterations"] == 2

    # Re-running the same command redoes nothing, and hand-written notes join the report.
    before = {p.name: p.stat().st_mtime_ns for p in (out / "panels").iterdir()}
    (out / "notes.md").write_text("## Why alpha/beta\n\nbecause.\n")
    assert CliRunner().invoke(app, args).exit_code == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "panels").iterdir()} == before
    assert (out / "report.md").read_text().rstrip().endswith("because.")


def test_resume_runs_only_unfinished_or_changed_panels(images, tmp_path):
    content_only = figures.plan(images["content"], [images["a"]], ["fig1-content"], size=48, iterations=2)
    fig = content_only[0]
    small = [figures.Figure(fig.name, fig.title, fig.panels[:2])]  # relu1_2 and relu2_2: cheap models
    first = Counter()
    sheets = figures.make_figures(small, tmp_path, device="cpu", threads=1, listener=first)
    assert first.ran == [p.name for p in small[0].panels] and first.steps == 4
    assert Image.open(sheets[0]).size == figures.sheet_size(2, (48, 36))

    # A half-finished figure: one panel's image is gone, so only that panel runs again.
    (tmp_path / "panels" / f"{small[0].panels[1].name}.png").unlink()
    second = Counter()
    figures.make_figures(small, tmp_path, device="cpu", threads=1, listener=second)
    assert second.skipped == [small[0].panels[0].name]
    assert second.ran == [small[0].panels[1].name] and second.steps == 2

    # Changed settings (more iterations) make a panel unfinished again.
    longer = figures.plan(images["content"], [images["a"]], ["fig1-content"], size=48, iterations=3)[0]
    assert figures.finished(tmp_path, longer.panels[0]) is None
    assert figures.finished(tmp_path, small[0].panels[0]) is not None


def test_plan_validates_inputs(images):
    with pytest.raises(InputError, match="unknown figure"):
        figures.parse_which("fig2")
    assert figures.parse_which("fig4,fig1-style") == ("fig1-style", "fig4")
    plans = figures.plan(images["content"], [images["a"], images["b"]], figures.FIGURES, size=48, iterations=1)
    assert [len(f.panels) for f in plans] == [5, 5, 2, len(figures.SWEEP_RATIOS)]
    assert plans[1].panels[2].style_layers == pytest.approx({"relu1_1": 1 / 3, "relu2_1": 1 / 3, "relu3_1": 1 / 3})
    sweep = figures.plan(images["content"], [images["a"]], ["fig4"], size=48, iterations=1, ratios=[1e-3],
                         sweep_init="content")
    assert [p.init for p in sweep[0].panels] == ["content"] and "the content image" in sweep[0].title
    with pytest.raises(InputError, match="sweep init"):
        figures.plan(images["content"], [images["a"]], ["fig4"], size=48, iterations=1, sweep_init="blank")
    with pytest.raises(InputError, match="32 pixels"):
        figures.plan(images["content"], [images["a"]], ["fig4"], size=20, iterations=1)


def test_a_long_title_fits_a_narrow_sheet():
    """Figure 3 with two styles is two panels wide; its title was cut off mid-word at the sheet's edge."""
    title = figures.TITLES["fig3"] + ", from the content photo"
    panels = [Image.new("RGB", (256, 192), "gray")] * 2
    sheet = np.asarray(figures.contact_sheet(title, panels, [["a"], ["b"]]).convert("L"))
    bar = sheet[: figures.TITLE_H]
    ink = np.nonzero((bar < 128).any(axis=0))[0]
    assert ink.size and ink[-1] < sheet.shape[1] - figures.PAD // 2, (ink[-1], sheet.shape[1])


def test_a_stop_ends_the_running_panel_and_stores_nothing(images, tmp_path):
    """`stop` (as `StopSignals.requested`) reaches the panel's run: it ends within an evaluation, nothing of
    it is stored, and the next run of the same plan does every panel."""
    out = tmp_path / "figs"
    plan = figures.plan(images["content"], [images["a"]], ("fig4",), size=48, iterations=50, ratios=[1e-2, 1e-6])
    counter = Counter()
    with pytest.raises(KeyboardInterrupt):
        figures.make_figures(plan, out, device="cpu", listener=counter, stop=lambda: counter.steps >= 2)
    assert 2 <= counter.steps < 50 and counter.ran == []
    assert list((out / "panels").iterdir()) == []
    begun = []
    counter.panel_start = lambda panel, index, total: begun.append(panel.name)
    with pytest.raises(KeyboardInterrupt):  # asked to stop before it starts: no panel is begun
        figures.make_figures(plan, out, device="cpu", listener=counter, stop=lambda: True)
    assert begun == []
