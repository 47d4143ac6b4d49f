"""Checkpoints from outside (issue #18): a crafted checkpoint cannot redirect writes, read
local files, exhaust memory, hang stylerun or end in a traceback.

Each file is built here from a real small checkpoint, then tampered with, and resumed
through the CLI in a subprocess under the corpus's memory cap and time limit
(`test_untrusted_files.run_stylerun`), which also checks nothing was written outside
the box's ``out/`` folder.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_untrusted_files import BOMB, assert_refused, npy_head, run_stylerun, zeros_member

from stylerun.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from stylerun.engine.optimizers import LbfgsState
from stylerun.errors import InputError
from stylerun.options import TransferOptions

OPTIONS = TransferOptions(size=48, iterations=3, content_layers="relu1_2", style_layers="relu1_1", device="cpu",
                          threads=1, lbfgs_memory=3)
SHAPE = (32, 48, 3)


def good_checkpoint(path: Path, options: TransferOptions = OPTIONS, inputs: dict | None = None,
                    with_state: bool = True) -> Path:
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, SHAPE).astype(np.float32)
    state = LbfgsState.fresh(image, options.lbfgs_memory) if with_state else None  # a made-up state stops at once
    if state is not None:
        state.task[0] = LbfgsState.NEW_X
    checkpoint = Checkpoint(options, 1, image, image.copy(), [image[::-1].copy()], 1e6, np.ones(1), state,
                            inputs or {"content": "c.jpg", "style": ["s.jpg"], "output": "/etc/stylerun-victim.png"})
    return save_checkpoint(path, checkpoint)


def rewritten(path: Path, replace: dict[str, bytes], extra: dict[str, tuple[bytes, int]] | None = None) -> Path:
    """`path` with members replaced by raw bytes, and `extra` members of (head, zero bytes) deflated."""
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            if name not in replace and name not in (extra or {}):
                zf.writestr(name, data)
        for name, data in replace.items():
            zf.writestr(name, data)
        for name, (head, zeros) in (extra or {}).items():
            zeros_member(zf, name, head, zeros)
    tmp.replace(path)
    return path


def settings_member(data: dict) -> bytes:
    return text_member(json.dumps(data))


def text_member(text: str) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array(text), allow_pickle=False)
    return buf.getvalue()


def box_with(tmp_path: Path, name: str) -> tuple[Path, Path]:
    box = tmp_path / name
    (box / "out").mkdir(parents=True)
    return box, good_checkpoint(box / "out" / "c.ckpt.npz")


def resume(box: Path, *extra: str):
    return run_stylerun(box, "transfer", "--resume", "out/c.ckpt.npz", "-q", *extra)


def test_a_good_checkpoint_resumes_and_writes_beside_itself_not_where_it_says(tmp_path):
    box, _ = box_with(tmp_path, "good")
    run = resume(box)
    assert run.code == 0, run.stderr
    assert (box / "out" / "c.png").is_file() and not Path("/etc/stylerun-victim.png").exists()
    assert run.peak_rss < 1 << 30


def test_an_unused_member_is_never_inflated(tmp_path):
    box, ckpt = box_with(tmp_path, "unused-bomb")
    rewritten(ckpt, {}, {"junk.npy": (npy_head((BOMB,), "|u1"), BOMB)})
    run = resume(box)
    assert run.code == 0, run.stderr
    assert run.peak_rss < 1 << 30


@pytest.mark.parametrize("case,member,needles", [
    ("terabyte-header", "image.npy", ["image is", "over the 64,000,000 pixel limit"]),
    ("81-megapixels", "content.npy", ["content is 9000x9000"]),
    ("inflating-history", "history.npy", ["history"]),
    ("huge-settings-text", "settings.npy", ["settings claims"]),
])
def test_members_claiming_too_much_are_refused_before_they_are_read(tmp_path, case, member, needles):
    box, ckpt = box_with(tmp_path, case)
    heads = {
        "terabyte-header": (npy_head((1 << 20, 1 << 20, 3), "<f4"), 0),
        "81-megapixels": (npy_head((9000, 9000, 3), "<f4"), BOMB),
        "inflating-history": (npy_head((1,), "<f8"), BOMB),  # declares 8 bytes, inflates to 1 GiB
        "huge-settings-text": (npy_head((), f"<U{1 << 28}"), 0),
    }
    rewritten(ckpt, {}, {member: heads[case]})
    assert_refused(resume(box), "is not a usable stylerun checkpoint", *needles)


def test_the_checkpoints_own_pixel_limit_is_not_trusted(tmp_path):
    box, ckpt = box_with(tmp_path, "raised-limit")
    data = {**OPTIONS.to_dict(), "max_pixels": 1 << 40, "content": "c.jpg", "style": "s.jpg"}
    rewritten(ckpt, {"settings.npy": settings_member(data)},
              {"image.npy": (npy_head((9000, 9000, 3), "<f4"), 0)})
    assert_refused(resume(box), "image is 9000x9000, over the 64,000,000 pixel limit", "--max-pixels")


@pytest.mark.parametrize("settings,needle", [
    ({"size": "big"}, "size must be a whole number"),
    ({"style_layers": 5}, "style_layers must be"),
    ({"iterations": [1, 2]}, "iterations must be a whole number"),
    ({"no_such_option": 1}, "unknown option 'no_such_option'"),
    ({"lbfgs_memory": 20000}, "lbfgs_memory must be at most 100"),
    ("deep", "not a usable stylerun checkpoint"),
])
def test_settings_of_the_wrong_type_are_one_line(tmp_path, settings, needle):
    box, ckpt = box_with(tmp_path, "settings")
    if settings == "deep":
        member = text_member("[" * 200_000 + "]" * 200_000)
    else:
        member = settings_member({**OPTIONS.to_dict(), **settings})
    rewritten(ckpt, {"settings.npy": member})
    assert_refused(resume(box), needle)


def test_an_encrypted_member_is_refused_as_a_checkpoint_never_as_weights(tmp_path):
    """zipfile would ask for a password; the refusal speaks of checkpoints (it once said "weights never are")."""
    ckpt = good_checkpoint(tmp_path / "c.ckpt.npz")
    raw = bytearray(ckpt.read_bytes())
    struct.pack_into("<H", raw, raw.index(b"PK\x01\x02") + 8, 1)  # the first member's flag bits: encrypted
    ckpt.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="is not a usable stylerun checkpoint") as info:
        load_checkpoint(ckpt)
    message = str(info.value)
    assert "is encrypted; a stylerun checkpoint never is" in message and "weights" not in message, message


def test_a_fifo_checkpoint_is_refused(tmp_path):
    box = tmp_path / "fifo"
    (box / "out").mkdir(parents=True)
    os.mkfifo(box / "out" / "c.ckpt.npz")
    assert_refused(resume(box), "FIFO")


def test_paths_inside_a_checkpoint_are_not_used_unless_trusted(tmp_path):
    box, ckpt = box_with(tmp_path, "mask-paths")
    data = {**OPTIONS.to_dict(), "content_masks": ["/etc/passwd"], "content": "c.jpg", "style": "s.jpg"}
    rewritten(ckpt, {"settings.npy": settings_member(data)})
    assert_refused(resume(box), "--content-mask is a path stored in checkpoint", "--trust-checkpoint-paths")


def test_an_existing_file_beside_the_checkpoint_is_not_overwritten(tmp_path):
    box, _ = box_with(tmp_path, "existing")
    (box / "out" / "c.png").write_bytes(b"precious")
    assert_refused(resume(box), "exists", "-o", "--force")
    assert (box / "out" / "c.png").read_bytes() == b"precious"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_checkpoints_only_ever_raise_input_error(tmp_path_factory, data):
    """Random byte flips, truncations and insertions in a real checkpoint: a checkpoint or an InputError."""
    folder = tmp_path_factory.mktemp("fuzz")
    original = good_checkpoint(folder / "c.ckpt.npz").read_bytes()
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            raw[at] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del raw[at: at + data.draw(st.integers(1, 64))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        if not raw:
            raw = bytearray(b"\0")
    path = folder / "m.ckpt.npz"
    path.write_bytes(bytes(raw))
    try:
        loaded = load_checkpoint(path)
    except InputError:
        return
    assert loaded.image.shape[:2] == loaded.content.shape[:2]


def test_the_checkpoint_path_stored_inside_is_not_used_for_writing(tmp_path):
    box = tmp_path / "stored-checkpoint-path"
    (box / "out").mkdir(parents=True)
    ckpt = good_checkpoint(box / "out" / "c.ckpt.npz", with_state=False)
    elsewhere = tmp_path / "elsewhere.ckpt.npz"
    data = {**OPTIONS.to_dict(), "checkpoint_every": 1, "checkpoint": str(elsewhere), "content": "c.jpg",
            "style": "s.jpg"}
    rewritten(ckpt, {"settings.npy": settings_member(data)})
    run = resume(box)
    assert run.code == 0, run.stderr
    assert not elsewhere.exists() and load_checkpoint(ckpt).iteration == 3  # it went on in its own file
