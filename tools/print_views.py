"""Two views of a print-size result for the docs: the whole picture scaled down, and a 100 % crop.

    python tools/print_views.py print.png docs/images/print --width 900 --crop 0.55,0.35,900,500

writes ``PREFIX_small.jpg`` (the whole image, `--width` px wide) and ``PREFIX_crop100.jpg``
(a `--crop` box of the full-resolution pixels, unscaled; its corner given as fractions of the
image's width and height so one command serves any print size).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image


def views(source: Path, prefix: Path, width: int, crop: tuple[float, float, int, int]) -> tuple[Path, Path]:
    image = Image.open(source).convert("RGB")
    small = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    fx, fy, cw, ch = crop
    x, y = round(fx * (image.width - cw)), round(fy * (image.height - ch))
    paths = prefix.with_name(prefix.name + "_small.jpg"), prefix.with_name(prefix.name + "_crop100.jpg")
    small.save(paths[0], quality=88)
    image.crop((x, y, x + cw, y + ch)).save(paths[1], quality=92)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("prefix", type=Path)
    parser.add_argument("--width", type=int, default=900)
    parser.add_argument("--crop", default="0.5,0.5,900,500",
                        help="x,y,w,h: the box's corner as fractions of the free room, and its size in px")
    args = parser.parse_args()
    fx, fy, cw, ch = args.crop.split(",")
    for path in views(args.image, args.prefix, args.width, (float(fx), float(fy), int(cw), int(ch))):
        print(path)


if __name__ == "__main__":
    main()
