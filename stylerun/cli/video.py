"""`stylerun video`: a video or a folder of frames, stylized frame by frame with temporal consistency."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from stylerun.cli.common import (
    Ending,
    at_once,
    context,
    err,
    finish,
    log_warnings_to,
    option_parameters,
    option_values,
    own,
    setting,
    spell,
)
from stylerun.cli.help import usage
from stylerun.console import Terminal
from stylerun.errors import mention_options
from stylerun.lines import VideoLines
from stylerun.options import TransferOptions
from stylerun.signals import StopSignals
from stylerun.video import run as video


def video_command(ctx: typer.Context, **params: Any) -> None:
    """Stylize a video (a file, or a folder of frames sorted by name) frame by frame, with temporal consistency.

    Each frame starts from the previous stylized frame warped by the optical flow, and a temporal term
    (--temporal-weight, 0 turns it off) keeps it close to that where the flow is consistent (Ruder et al. 2016).

    OUTPUT: a folder (PNG frames) or a video file (.mp4, .webm, .mkv, .mov, .gif; the input's audio is copied);
    a video's frames are kept in OUTPUT.frames beside it.

    Ctrl-C or SIGTERM stops within a moment; finished frames are kept and the same command with
    --resume goes on from the next one.

    Exit status: 0 done, 2 bad input or option, 3 the loss stopped being finite, 130/143 interrupted.
    """
    log_warnings_to(err)
    settings = video.VideoSettings(params["temporal_weight"], params["flow"], params["frames"], params["fps"],
                                   video.parse_temporal_frames(params["temporal_frames"]))
    options = TransferOptions().replace(**option_values(ctx, params, given_only=True))
    listener = VideoLines(Terminal(err), options.iterations, quiet=params["quiet"], spell=spell, setting=setting)
    with at_once("stylerun: interrupted; finished frames are kept (go on with --resume)"), StopSignals() as stopper:
        try:
            result = video.run_video(params["input"], [str(s) for s in params["style"]], params["output"],
                                     options, settings, listener, stopper.requested, params["resume"])
        finally:
            listener.close()
    finish(ending(result), stopper, params["quiet"])


def ending(result: video.VideoResult) -> Ending:
    """How a video ended, in words: frames are kept whatever happened."""
    if result.error:
        return Ending(error=f"{mention_options(result.error, spell)}; finished frames are kept")
    if result.interrupted:
        return Ending(stopped=f": {len(result.frames) + result.skipped} frames done and kept; go on with the same "
                              "command and --resume")
    return Ending(done=f"wrote {result.output} ({len(result.frames)} frames stylized, {result.skipped} kept from "
                       "before)")


def _signature() -> inspect.Signature:
    panel, defaults = "Video", video.VideoSettings()
    first = [
        context(),
        own("input", Path, typer.Argument(..., help="A video file or a folder of frames.", metavar="INPUT")),
        own("style", list[Path], typer.Argument(..., help="Style painting(s).", metavar="STYLE...")),
        own("output", Path, typer.Option(..., "-o", "--output", metavar="OUTPUT", rich_help_panel=panel,
                                         help="A folder for PNG frames, or a video file.")),
        own("temporal_weight", float, typer.Option(defaults.temporal_weight, "--temporal-weight", metavar="G",
                                                   rich_help_panel=panel,
                                                   help="Weight gamma of the temporal term; 0 turns it off (each "
                                                        "frame still starts from the warped previous one).")),
        own("flow", str, typer.Option(defaults.flow, "--flow", metavar="dis|farneback", rich_help_panel=panel,
                                      help="Optical flow (OpenCV).")),
        own("frames", str | None, typer.Option(None, "--frames", metavar="A:B", rich_help_panel=panel,
                                               help="Only frames A to B-1 (from 0).")),
        own("fps", float | None, typer.Option(None, "--fps", metavar="FPS", rich_help_panel=panel,
                                              help="Frame rate of a video output (default: the input's; 24 for "
                                                   "frame folders).")),
        own("temporal_frames", str, typer.Option("1", "--temporal-frames", metavar="1,2,4", rich_help_panel=panel,
                                                 help="Earlier frames the temporal term ties each frame to "
                                                      "(long-term consistency).")),
        own("resume", bool, typer.Option(False, "--resume", rich_help_panel=panel,
                                         help="Go on after an interrupted run: finished frames are kept.")),
        own("quiet", bool, typer.Option(False, "--quiet", "-q", help="No progress bar.", rich_help_panel=panel)),
    ]
    return inspect.Signature([*first, *option_parameters(video.NOT_FOR_VIDEO)])


video_command.__signature__ = _signature()


def register(app: typer.Typer) -> None:
    """Add `stylerun video` to the app."""
    app.command("video", cls=usage("[OPTIONS] INPUT STYLE... -o OUTPUT"))(video_command)
