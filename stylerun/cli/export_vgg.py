"""`stylerun export-vgg`: VGG19 as an ONNX loss-and-gradient model, for use outside stylerun."""

from __future__ import annotations

from pathlib import Path

import typer

from stylerun.cli.common import err
from stylerun.cli.help import usage
from stylerun.console import say
from stylerun.network.export import export_vgg
from stylerun.network.loss_graph import LayerSet
from stylerun.options import TransferOptions, spec
from stylerun.weights.formats import load_weights


def export_vgg_command(
    output: Path = typer.Option(
        ..., "-o", "--output", help="Model file to write (NAME.onnx; NAME.targets.onnx goes beside it).",
        metavar="FILE",
    ),
    content_layers: str = typer.Option(spec("content_layers").cli_default, "--content-layers",
                                       help=spec("content_layers").help, metavar="LAYERS"),
    style_layers: str = typer.Option(spec("style_layers").cli_default, "--style-layers",
                                     help=spec("style_layers").help, metavar="LAYERS",
                                     show_default=spec("style_layers").shown_default),
    pooling: str = typer.Option(spec("pooling").cli_default, "--pooling", help=spec("pooling").help,
                                metavar=spec("pooling").metavar),
    weights: Path | None = typer.Option(None, "--weights", help=spec("weights").help, metavar="FILE"),
    swap_red_blue: bool = typer.Option(False, "--swap-red-blue", help=spec("swap_red_blue").help),
) -> None:
    """Export VGG19, cut at the deepest layer asked for, as an ONNX loss-and-gradient model.

    The model takes the image, the targets, per-layer weights, alpha and beta as inputs
    (see the model contract in docs/weights.md), so one export serves every image and weighting.
    """
    options = TransferOptions(content_layers=content_layers, style_layers=style_layers, pooling=pooling,
                              weights=None if weights is None else str(weights), swap_red_blue=swap_red_blue)
    layers = LayerSet.of(options.content_layers, options.style_layers, options.pooling,
                         swap_red_blue=options.swap_red_blue)
    vgg = load_weights(options.weights)
    say(vgg.describe(), err)
    files = export_vgg(vgg, layers, output)
    say(f"wrote {files.loss} and {files.targets} (VGG19 up to {layers.deepest}, {layers.pooling} pooling)", err)


def register(app: typer.Typer) -> None:
    """Add `stylerun export-vgg` to the app."""
    app.command("export-vgg", cls=usage("[OPTIONS] -o FILE"))(export_vgg_command)
