"""`style_strength`: α/β from the far-end terms measured on the inputs, and where the choice is kept."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from helpers import SHALLOW, SHALLOW_FLAGS, run_cli
from PIL import Image

from stylerun.engine import strength
from stylerun.engine.checkpoint import BALANCE_KEY, load_checkpoint
from stylerun.engine.loss import StyleLoss, resize_to
from stylerun.engine.run import Job, resume_job, run
from stylerun.errors import InputError, OptionError
from stylerun.options import TransferOptions

FAST = dict(**SHALLOW, device="cpu", threads=1)
SMALL = ("--size", "48", *SHALLOW_FLAGS, "--device", "cpu")


def test_the_far_terms_are_the_two_ends_and_set_alpha_over_beta(content_path, style_path):
    loss = StyleLoss(content_path, style_path, size=48, style_strength=0.3, **FAST)
    plain = StyleLoss(content_path, style_path, size=48, alpha=1.0, beta=1.0, **FAST)
    plain.loss_and_grad(plain.content_image)  # the photo, against the painting's Grams
    style_far = plain.last_terms[1]
    plain.loss_and_grad(resize_to(plain.style_image, plain.shape))  # the painting, against the photo's features
    content_far = plain.last_terms[0]
    assert loss.far_terms == pytest.approx((content_far, style_far), rel=1e-5)
    assert loss.beta == 1.0
    assert loss.alpha == pytest.approx(strength.factor(0.3, "content", 48 * 32) * style_far / content_far, rel=1e-5)
    assert np.isnan(plain.far_terms[0])  # explicit weights: nothing measured


def test_alpha_over_beta_follows_the_pixels_so_the_strength_does_not(content_path, style_path):
    small = StyleLoss(content_path, style_path, size=48, **FAST)
    large = StyleLoss(content_path, style_path, size=96, **FAST)
    (c_small, s_small), (c_large, s_large) = small.far_terms, large.far_terms
    # the content term grows with the pixels (4x here), the style term does not
    assert 2.5 < (s_small / c_small) / (s_large / c_large) < 6
    # and a larger picture keeps more of the photo at the same normalized weights: SLOPE decades per doubling
    expected = (s_small / c_small) / (s_large / c_large) * 10 ** strength.SLOPE
    assert small.alpha / large.alpha == pytest.approx(expected, rel=1e-4)


def test_a_higher_strength_paints_more_of_the_painting(content_path, style_path):
    reach, style_left = {}, {}
    for s in (0.1, 0.9):
        outcome = run(Job.of(content_path, style_path, size=48, iterations=15, style_strength=s, **FAST))
        loss = outcome.loss_object
        loss.loss_and_grad(outcome.image)
        content, style = loss.last_terms
        reach[s], style_left[s] = content / loss.far_terms[0], style / loss.far_terms[1]
    assert reach[0.1] < reach[0.9] and style_left[0.1] > style_left[0.9], (reach, style_left)


def test_strength_and_weights_are_one_or_the_other():
    assert TransferOptions().weighting() == 0.5
    assert TransferOptions(style_strength=0.2).weighting() == 0.2
    assert TransferOptions(alpha=1e-3).weighting() == (1e-3, 1.0)  # the other weight: the original's
    assert TransferOptions(beta=2.0).weighting() == (1e-6, 2.0)
    with pytest.raises(OptionError) as info:
        TransferOptions(style_strength=0.2, alpha=1e-3)
    assert info.value.option == "style_strength"
    with pytest.raises(OptionError, match="style_strength"):
        TransferOptions.from_dict({"style_strength": 1.5})
    assert TransferOptions().replace(preset="seed").weighting() == (1e-6, 1.0)
    assert TransferOptions().replace(preset="seed", style_strength=0.7).weighting() == 0.7  # given wins


def test_the_cli_refuses_a_strength_with_weights_in_one_line(capsys, monkeypatch, tmp_path, content_path, style_path):
    out = tmp_path / "out.png"
    for extra, says in ((("--style-strength", "0.3", "--alpha", "1e-3"), "--style-strength cannot be combined "
                                                                          "with --alpha/--beta"),
                        (("--style-strength", "2"), "--style-strength must be a finite number >= 0 and <= 1")):
        code, err = run_cli(capsys, monkeypatch, "transfer", str(content_path), str(style_path), "-o", str(out),
                            *SMALL, "-n", "1", *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err
    assert not out.exists()


def _settings(ckpt) -> dict:
    with zipfile.ZipFile(ckpt) as zf:
        return json.loads(str(np.load(zf.open("settings.npy"))))


def _rewrite_settings(ckpt, settings: dict) -> None:
    with np.load(ckpt) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["settings"] = np.array(json.dumps(settings))
    with open(ckpt, "wb") as f:
        np.savez(f, **arrays)


def test_a_checkpoint_keeps_the_chosen_weights_and_resume_uses_them(tmp_path, content_path, style_path):
    out = tmp_path / "out.png"
    outcome = run(Job.of(content_path, style_path, out, size=48, iterations=4, checkpoint_every=2, **FAST),
                  stop=lambda: False)
    chosen = [outcome.loss_object.alpha, outcome.loss_object.beta, outcome.loss_object.tv_weight]
    settings = _settings(outcome.checkpoint)
    assert chosen[2] > 0  # the default smoothness chose a TV weight
    assert settings[BALANCE_KEY] == pytest.approx(chosen) and settings["style_strength"] is None
    settings |= {BALANCE_KEY: [0.25, 2.0, 0.125], "iterations": 6}
    _rewrite_settings(outcome.checkpoint, settings)
    assert load_checkpoint(outcome.checkpoint).balance == (0.25, 2.0, 0.125)
    job, state = resume_job(outcome.checkpoint, tmp_path / "more.png")
    resumed = run(job, resume=state)
    kept = resumed.loss_object
    assert (kept.alpha, kept.beta, kept.tv_weight) == (0.25, 2.0, 0.125)  # kept, not measured again
    for bad in (["x", 1], [1.0], [-1.0, 1.0], [float("nan"), 1.0]):
        _rewrite_settings(outcome.checkpoint, {**settings, BALANCE_KEY: bad})
        with pytest.raises(InputError, match=f"not a usable stylerun checkpoint .*{BALANCE_KEY}"):
            load_checkpoint(outcome.checkpoint)


@pytest.mark.parametrize("name,extra", [("out.png", {}), ("out.jpg", {}), ("deep.png", {"bit_depth": 16}),
                                        ("out.tif", {})])
def test_outputs_record_the_weights_in_use(tmp_path, content_path, style_path, name, extra):
    out = tmp_path / name
    outcome = run(Job.of(content_path, style_path, out, size=48, iterations=1, **FAST, **extra))
    with Image.open(out) as im:
        text = {"JPEG": lambda: im.info["comment"].decode(), "TIFF": lambda: im.tag_v2[270]}.get(
            im.format, lambda: "stylerun: " + im.text["stylerun"])()
    record = json.loads(text.split("stylerun: ", 1)[1].splitlines()[0])
    assert record["alpha"] == pytest.approx(outcome.loss_object.alpha) and record["beta"] == 1.0
    assert record["style_strength"] == 0.5 and record["options"]["size"] == 48
    assert record["far_terms"]["content"] == pytest.approx(outcome.loss_object.far_terms[0])


def test_the_record_is_strict_json_when_nothing_was_measured(tmp_path, content_path, style_path):
    """Given weights measure no far terms: they are null, not NaN, which strict JSON parsers refuse."""
    out = tmp_path / "out.png"
    run(Job.of(content_path, style_path, out, size=48, iterations=1, **{**FAST, "alpha": 1e-3, "beta": 1.0}))
    with Image.open(out) as im:
        text = im.text["stylerun"]

    def refuse(constant: str):
        raise ValueError(f"not strict JSON: {constant}")

    record = json.loads(text, parse_constant=refuse)
    assert record["far_terms"] == {"content": None, "style": None} and record["style_strength"] is None


def test_the_api_returns_the_record_with_the_picture(tmp_path, content_path, style_path):
    import stylerun

    picture = stylerun.transfer(content_path, style_path, tmp_path / "out.png", size=48, iterations=1,
                                style_strength=0.8, **FAST)
    record = json.loads(picture.info["stylerun"])
    assert record["style_strength"] == 0.8 and record["options"]["style_strength"] == 0.8
    with Image.open(tmp_path / "out.png") as im:
        assert json.loads(im.text["stylerun"]) == record


def test_a_video_keeps_the_first_frames_weights(content_path, style_path):
    from stylerun.video.run import same_weights

    outcome = run(Job.of(content_path, style_path, size=48, iterations=1, **FAST))
    chosen = (outcome.loss_object.alpha, outcome.loss_object.beta)
    assert same_weights(TransferOptions(style_strength=0.5), outcome).weighting() == chosen
    assert same_weights(TransferOptions(alpha=1e-3), outcome).weighting() == (1e-3, 1.0)  # given: kept as given
