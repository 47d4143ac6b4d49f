"""Loss-term magnitudes behind the alpha/beta question (no optimization; CPU friendly).

Usage: python tools/alpha_beta.py CONTENT STYLE [FIG_DIR] > docs/figures/alpha_beta.json

For each size, measures at three starting images (white noise, the content photo, the
style painting resized to the photo) the content term (relu4_2, weight 1) and the style
term (relu1_1..relu5_1 at 0.2) of stylerun's loss, and the same terms on the paper's
*normalized* VGG19, in which every feature map is divided by its mean activation (Gatys
et al. rescaled the weights so the mean activation of each filter is 1). The means are
estimated here from the content and style images themselves, not from ImageNet, and
floored at a tenth of the layer's average so that channels silent on both images stay finite.
With FIG_DIR, the finished Figure 4 panels in FIG_DIR/panels are measured too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from stylerun.images.codec import as_image, fit_longest_side, resize, to_array
from stylerun.network.export import cached_export
from stylerun.network.loss_graph import LayerSet, content_target_name
from stylerun.network.sessions import LossModel
from stylerun.vgg import DEFAULT_STYLE_LAYERS

STYLE = DEFAULT_STYLE_LAYERS  # relu1_1..relu5_1 at 0.2
CONTENT = "relu4_2"
LAYERS = [*STYLE, CONTENT]


def features(model: LossModel, image: np.ndarray) -> dict[str, np.ndarray]:
    out = model.targets(image)
    return {n: out[content_target_name(n)].reshape(out[content_target_name(n)].shape[-3], -1) for n in LAYERS}


def terms(f: dict, p: dict, a: dict, mu: dict | None = None) -> dict:
    """Content and style terms of features f against content features p and style features a."""
    def scaled(x, n):
        return x if mu is None else x / mu[n][:, None]

    content = 0.5 * float(((scaled(f[CONTENT], CONTENT) - scaled(p[CONTENT], CONTENT)) ** 2).sum())
    per_layer = {}
    for n, w in STYLE.items():
        x, y = scaled(f[n], n), scaled(a[n], n)
        big_n, big_m = x.shape
        g, gt = x @ x.T, y @ y.T
        per_layer[n] = w * float((((g - gt) / (2 * big_n * big_m)) ** 2).sum())
    return {"content": content, "style": sum(per_layer.values()), "style_per_layer": per_layer}


def main() -> None:
    content_path, style_path = sys.argv[1], sys.argv[2]
    fig_dir = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    model = LossModel(cached_export(LayerSet.of(dict.fromkeys(LAYERS, 1.0), {}, "max")), "cpu")
    report = {}
    for size in (256, 512):
        photo = as_image(content_path)
        photo = resize(photo, fit_longest_side(photo.size, size))
        c = to_array(photo)
        s = to_array(resize(as_image(style_path), photo.size))
        noise = np.random.default_rng(0).uniform(0, 255, c.shape).astype(np.float32)
        fc, fs, fn = features(model, c), features(model, s), features(model, noise)
        # Channels (nearly) silent on both images would blow up; floor them at a tenth of the layer's mean.
        mu = {n: (fc[n].mean(1) + fs[n].mean(1)) / 2 for n in LAYERS}
        mu = {n: np.maximum(m, 0.1 * m.mean()) for n, m in mu.items()}
        entry = {"shape": list(c.shape), "mean_activation": {n: float(mu[n].mean()) for n in LAYERS},
                 "rms_activation": {n: float(np.sqrt(((fc[n] ** 2).mean() + (fs[n] ** 2).mean()) / 2))
                                    for n in LAYERS}}
        for name, f in (("noise", fn), ("content", fc), ("style", fs)):
            entry[name] = {"stylerun": terms(f, fc, fs), "paper_normalized": terms(f, fc, fs, mu)}
        if fig_dir is not None and size == 256:
            panels = {}
            for meta in sorted((fig_dir / "panels").glob("fig4_*.json")):
                rec = json.loads(meta.read_text())
                img = to_array(Image.open(meta.with_suffix(".png")).convert("RGB"))
                if img.shape != c.shape:
                    continue
                f = features(model, img)
                panels[meta.stem] = {"alpha": rec["settings"]["alpha"], "stylerun": terms(f, fc, fs),
                                     "paper_normalized": terms(f, fc, fs, mu)}
            entry["fig4_panels"] = panels
        report[str(size)] = entry
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
