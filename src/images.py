"""Opening user images safely: one clear message for anything that is not a usable picture."""

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError

# Largest image we decode (pixels). 30000x30000 = 9e8 would need ~2.7 GB as RGB.
MAX_IMAGE_PIXELS = 64_000_000


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, transparency on white and 16-bit grey scaled to 8 bit."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        return Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA")).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: scale to 8 bit instead of clipping everything above 255 to white
        img = img.convert("I")
        scale = 255 / 65535 if img.width * img.height and img.getextrema()[1] > 255 else 1
        return img.point(lambda v: v * scale).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS, *, exif_orientation: bool = False) -> Image.Image:
    """An image file as RGB (first frame), or one UserError naming the file and what is wrong with it.
    `exif_orientation` turns a user's photo upright; dataset images stay as stored (docs/notes.md)."""
    path = Path(path)
    try:
        if not path.exists():
            raise UserError(f"image not found: {path} (check the path; relative paths are from the current directory)")
        if path.is_dir():
            raise UserError(f"{path} is a folder, not an image file")
        if path.stat().st_size == 0:
            raise UserError(f"image file is empty (0 bytes): {path}")
        with Image.open(path) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise UserError(f"image too large: {path} is {w}x{h} pixels (limit {max_pixels:,}); resize it first")
            img.seek(0)
            img.load()
            return _to_rgb(ImageOps.exif_transpose(img) if exif_orientation else img)
    except PermissionError:  # before OSError: the file is fine, this user just may not read it
        raise UserError(f"permission denied: cannot read image {path}; check its permissions "
                        f"(e.g. chmod a+r {path})") from None
    except Image.DecompressionBombError:  # PIL's own header check, beyond twice its default limit
        raise UserError(f"image too large: {path} declares more than {Image.MAX_IMAGE_PIXELS * 2:,} pixels "
                        f"(limit {max_pixels:,}); resize it first") from None
    except UnidentifiedImageError:
        raise UserError(f"not an image (or an unsupported format): {path}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise UserError(f"cannot decode image {path}: {e} (the file may be truncated or corrupt)") from None


def shown_path(path: str | Path) -> str:
    """`path` as printable UTF-8 text: bytes of a name that is not valid UTF-8 escaped as \\xNN."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name; an error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"image folder not found: {folder}")
    try:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    except PermissionError:
        raise UserError(f"permission denied: cannot list image folder {folder}; check its permissions "
                        f"(e.g. chmod a+rx {folder})") from None
    if not paths:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {folder}")
    return paths


def load_images(paths, *, exif_orientation: bool = False) -> tuple[dict, dict]:
    """({path: RGB image}, {path: error}) of each distinct path: a bad file is an error entry, not a stopped run."""
    images, errors = {}, {}
    for p in dict.fromkeys(paths):
        try:
            images[p] = load_image(p, exif_orientation=exif_orientation)
        except UserError as e:
            errors[p] = str(e)
    return images, errors
