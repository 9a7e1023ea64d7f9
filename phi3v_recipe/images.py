"""Image files as the model must see them, everywhere they are read (training, checks, predict, the app): turned
upright by their EXIF orientation (as transformers' own loader does, so a phone photo trains as it is shown), and
16-bit images scaled to 8 bits (PIL's RGB conversion clips them, which turns most of a 16-bit photo white), and
refused when they decode without an error but not as their header promised (``check_decoded``)."""

import struct
import zlib
from pathlib import Path

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
    """The image file at ``path``, upright and in 8-bit RGB; DecodedWrong when its data ends early or is corrupt in
    a way the decoder does not report."""
    with Image.open(path) as image:
        image.load()
        check_decoded(image, path)
        return to_rgb(image)


class DecodedWrong(OSError):
    """An image file that decodes without an error, but not as its header promised."""


def check_decoded(image: Image.Image, path) -> None:
    """Two silent decodes of a damaged file, caught from the pixels the decoder filled in, at the cost of one look at
    the last rows of every image:

    - a PNG whose compressed data is complete but too short: Pillow leaves the missing rows at 0. When the last row
      is all 0, the data is inflated again and its length compared with what the header promises;
    - a JPEG whose scan ends early (cut, its end marker put back) or holds junk: the decoder reads no more
      coefficients and every later block is flat grey (128). Its last eight rows all exactly 128 are taken for that:
      a real photo whose bottom rows are exactly mid-grey is refused too (said in the reason).

    What is not caught: damage that still decodes to plausible pixels (a progressive JPEG cut short is blurred, not
    grey; flipped bits inside a JPEG scan)."""
    width, height = image.size
    if image.format == "PNG" and not np.asarray(image.crop((0, height - 1, width, height))).any():
        inflated, promised = png_data_length(path)
        if inflated < promised:
            raise DecodedWrong(
                f"its image data inflates to {inflated} bytes of the {promised} its header promises: the rows past "
                "them decode as black"
            )
    elif image.format == "JPEG" and image.mode in ("L", "RGB"):
        if (np.asarray(image.crop((0, max(0, height - 8), width, height))) == 128).all():
            raise DecodedWrong(
                "its last 8 rows decode as flat grey (128), as a JPEG whose data ends early or is corrupt does (or "
                "the photo truly ends in exact mid-grey)"
            )


SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def png_data_length(path) -> tuple[int, int]:
    """(bytes a PNG's image data inflates to, bytes its header promises: each row of each pass and its filter byte)."""
    data = Path(path).read_bytes()
    width, height, depth, colour, _, _, interlaced = struct.unpack(">IIBBBBB", data[16:29])
    inflate, inflated, pos = zlib.decompressobj(), 0, 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            inflated += len(inflate.decompress(data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    bits = depth * SAMPLES[colour]
    promised = 0
    for x0, y0, dx, dy in ADAM7 if interlaced else [(0, 0, 1, 1)]:
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            promised += rows * (1 + -(-columns * bits // 8))
    return inflated, promised


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image once turned upright, read from its header (no decoding)."""
    width, height = image.size
    return (height, width) if image.getexif().get(0x0112) in TURNED else (width, height)
