#!/usr/bin/env python3
"""Regenerate the shipped demo images from the photos bundled in scikit-image.

Only files that ship *inside* the scikit-image wheel (``skimage/data/``) are
read, straight from disk with Pillow -- nothing is downloaded (no pooch).
Every chosen photo carries a licence statement in scikit-image's own
documentation (public domain / CC0 / "no known copyright restrictions");
see baseline_images/README.md and data/README.md.

Usage (from the repository root)::

    python baseline_images/make_baseline_images.py          # baseline_images/pic_01..10.jpg
    python baseline_images/make_baseline_images.py --tiny   # + data/picture_01..06.jpg

The recipe is deterministic: fixed sources, fixed crops, Lanczos resize to a
longest side of at most 640 px, greyscale promoted to RGB, JPEG quality 90
without EXIF/ICC metadata. (Byte-identical output additionally assumes the
same Pillow/libjpeg build; pixel content is identical in any case.)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

MAX_SIDE = 640
QUALITY = 90

REPO_ROOT = Path(__file__).resolve().parent.parent

# (output name, skimage/data file, crop box (left, upper, right, lower) or None)
BASELINE = [
    ("pic_01.jpg", "astronaut.png", None),          # astronaut Eileen Collins (NASA)
    ("pic_02.jpg", "coffee.png", None),             # espresso cup on saucer
    ("pic_03.jpg", "chelsea.png", None),            # Chelsea the cat
    ("pic_04.jpg", "rocket.jpg", None),             # Falcon 9 / DSCOVR on the pad
    ("pic_05.jpg", "camera.png", None),             # cameraman with tripod (greyscale)
    ("pic_06.jpg", "coins.png", None),              # 24 Greek coins (greyscale)
    ("pic_07.jpg", "hubble_deep_field.jpg", None),  # Hubble eXtreme Deep Field
    ("pic_08.jpg", "retina.jpg", None),             # fundus photo of a retina
    ("pic_09.jpg", "ihc.png", None),                # IHC-stained colon tissue
    ("pic_10.jpg", "brick.png", None),              # brick wall (greyscale)
]

# Pictures for data/tiny.jsonl (course mini set). picture_05 is a crop of the
# top-left 2x2 coins so that the counting question has a small answer (4).
TINY = [
    ("picture_01.jpg", "coffee.png", None),
    ("picture_02.jpg", "chelsea.png", None),
    ("picture_03.jpg", "astronaut.png", None),
    ("picture_04.jpg", "rocket.jpg", None),
    ("picture_05.jpg", "coins.png", (0, 0, 128, 158)),
    ("picture_06.jpg", "camera.png", None),
]


def skimage_data_dir() -> Path:
    try:
        import skimage  # noqa: WPS433 - only used to locate the bundled files
    except ImportError:  # pragma: no cover - message for humans
        sys.exit("scikit-image is required: pip install scikit-image")
    return Path(skimage.__file__).resolve().parent / "data"


def render(src: Path, crop, min_side: int = 0) -> Image.Image:
    with Image.open(src) as im:
        im.load()
        img = im.convert("RGB")
    if crop is not None:
        img = img.crop(crop)
    w, h = img.size
    scale = 1.0
    if max(w, h) > MAX_SIDE:
        scale = MAX_SIDE / max(w, h)
    elif min_side and min(w, h) < min_side:
        # tiny crops are upscaled (integer factor) so they are easy to look at
        scale = float(-(-min_side // min(w, h)))
    if scale != 1.0:
        img = img.resize((round(w * scale), round(h * scale)), Image.LANCZOS)
    return img


def save(img: Image.Image, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.save(dst, "JPEG", quality=QUALITY, optimize=True, progressive=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "baseline_images",
                    help="output folder for pic_XX.jpg (default: baseline_images/)")
    ap.add_argument("--tiny", action="store_true",
                    help="also write data/picture_XX.jpg used by data/tiny.jsonl")
    ap.add_argument("--tiny-out", type=Path, default=REPO_ROOT / "data",
                    help="output folder for picture_XX.jpg (default: data/)")
    args = ap.parse_args(argv)

    data_dir = skimage_data_dir()
    jobs = [(args.out / name, src, crop, 0) for name, src, crop in BASELINE]
    if args.tiny:
        jobs += [(args.tiny_out / name, src, crop, 256) for name, src, crop in TINY]

    for dst, src_name, crop, min_side in jobs:
        src = data_dir / src_name
        if not src.is_file():
            sys.exit(f"missing bundled scikit-image file: {src}")
        img = render(src, crop, min_side)
        save(img, dst)
        print(f"{dst.relative_to(REPO_ROOT) if dst.is_relative_to(REPO_ROOT) else dst}"
              f"  <- skimage/data/{src_name}  {img.size[0]}x{img.size[1]}"
              f"  {dst.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
