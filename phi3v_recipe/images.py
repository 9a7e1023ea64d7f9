"""Image files as the model must see them, everywhere they are read (training, checks, predict, the app): turned
upright by their EXIF orientation (as transformers' own loader does, so a phone photo trains as it is shown), and
16-bit images scaled to 8 bits (PIL's RGB conversion clips them, which turns most of a 16-bit photo white)."""

import numpy as np
from PIL import Image, ImageOps

SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")
TURNED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def to_rgb(image: Image.Image) -> Image.Image:
    """An opened image, upright and in 8-bit RGB."""
    image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float64)
        full_scale = 255 if image.mode == "I" and values.max() <= 255 else 65535
        image = Image.fromarray(np.clip(values / full_scale * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def open_rgb(path) -> Image.Image:
    """The image file at ``path``, upright and in 8-bit RGB."""
    with Image.open(path) as image:
        return to_rgb(image)


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image once turned upright, read from its header (no decoding)."""
    width, height = image.size
    return (height, width) if image.getexif().get(0x0112) in TURNED else (width, height)
