"""Phi-3-Vision's HD image transform: resize so that the image tiles into at most ``num_crops`` 336x336 crops,
pad with white, normalise, and stack ``[global 336x336 view] + crops`` zero-padded to ``num_crops + 1`` slots.

Resizing and padding follow the reference exactly (PIL bilinear resize, white padding before normalisation,
torch bicubic global view of the normalised padded image); everything after the resize is tensor work.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_transforms import to_pil_image
from transformers.processing_utils import ImagesKwargs

CROP = 336
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def hd_grid(width: int, height: int, num_crops: int) -> tuple[int, int, int, int]:
    """Return ``(resized_w, resized_h, rows, cols)`` of the HD transform for an image of this size, where
    ``rows x cols`` is the crop grid of the padded image. Pure arithmetic: no pixels are touched."""
    transposed = width < height
    if transposed:
        width, height = height, width
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_w = int(scale * CROP)
    new_h = max(int(new_w / ratio), 1)  # the reference would crash on a 0-pixel side; extreme ratios keep 1 row
    rows, cols = math.ceil(new_h / CROP), scale
    if transposed:
        return new_h, new_w, cols, rows
    return new_w, new_h, rows, cols


def num_image_tokens(width: int, height: int, num_crops: int, tokens_per_crop: int = 144) -> int:
    """Number of image tokens the model spends on an image of this size (sub-crops with a separator per row,
    one global separator, the global view with its separators)."""
    *_, rows, cols = hd_grid(width, height, num_crops)
    side = math.isqrt(tokens_per_crop)
    return (rows * cols + 1) * tokens_per_crop + 1 + (rows + 1) * side


class Phi3VImagesKwargs(ImagesKwargs, total=False):
    num_crops: int
    num_img_tokens: int


# Keys a saved preprocessor_config.json holds besides the settings: kept (the hub's `auto_map` is written back as
# it was read), never taken for settings.
FILE_KEYS = {"auto_map", "image_processor_type", "processor_class", "feature_extractor_type"}


def check_num_crops(num_crops: int) -> None:
    if not isinstance(num_crops, int) or num_crops < 1:
        raise ValueError(f"num_crops must be a whole number of at least 1, got {num_crops!r}.")


class Phi3VImageProcessor(BaseImageProcessor):
    valid_kwargs = Phi3VImagesKwargs
    model_input_names = ["pixel_values", "image_sizes"]

    def __init__(
        self,
        num_crops: int = 1,
        image_mean: list[float] = OPENAI_CLIP_MEAN,
        image_std: list[float] = OPENAI_CLIP_STD,
        num_img_tokens: int = 144,
        do_convert_rgb: bool = True,
        **kwargs,
    ):
        unknown = sorted(set(kwargs) - FILE_KEYS)
        if unknown:  # a misspelt setting (num_crop=16) would otherwise be stored and ignored
            raise TypeError(
                f"Phi3VImageProcessor does not take {', '.join(unknown)}; its settings are num_crops, image_mean, "
                "image_std, num_img_tokens and do_convert_rgb."
            )
        super().__init__(**kwargs)
        check_num_crops(num_crops)
        self.num_crops = num_crops
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.num_img_tokens = num_img_tokens
        self.do_convert_rgb = do_convert_rgb

    def num_image_tokens(self, width: int, height: int, num_crops: int | None = None) -> int:
        """Image tokens for an image of this size at ``num_crops`` (this processor's by default; no pixel work)."""
        return num_image_tokens(width, height, num_crops or self.num_crops, self.num_img_tokens)

    @staticmethod
    def to_pil(image) -> Image.Image:
        """A PIL image as is; a numpy array or torch tensor (HWC or CHW, uint8 or floats in [0, 1]) as a PIL image,
        as transformers' own image processors read them."""
        if isinstance(image, Image.Image):
            return image
        if isinstance(image, (np.ndarray, torch.Tensor)):
            return to_pil_image(image)
        raise TypeError(
            f"Phi-3-Vision takes PIL images, numpy arrays, torch tensors, file paths or URLs; got {type(image).__name__}."
        )

    def hd_image(self, image: Image.Image, num_crops: int | None = None, mean=None, std=None) -> torch.Tensor:
        """One PIL image -> its normalised, padded HD tensor ``[3, rows*336, cols*336]``."""
        image = image.convert("RGB")  # also flattens RGBA, palette and grayscale images
        new_w, new_h, rows, cols = hd_grid(*image.size, num_crops or self.num_crops)
        transposed = image.width < image.height
        if transposed:
            image = image.transpose(Image.Transpose.TRANSPOSE)
            new_w, new_h, rows, cols = new_h, new_w, cols, rows
        resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.array(resized)).permute(2, 0, 1).float().div(255)
        pad = rows * CROP - new_h
        top = pad // 2
        pixels = F.pad(pixels, (0, 0, top, pad - top), value=1.0)  # white, as 255 before scaling
        if transposed:
            pixels = pixels.transpose(1, 2)
        mean = torch.tensor(mean or self.image_mean).view(3, 1, 1)
        std = torch.tensor(std or self.image_std).view(3, 1, 1)
        return (pixels - mean) / std

    def crops(self, hd: torch.Tensor, num_crops: int | None = None) -> torch.Tensor:
        """HD tensor -> ``[num_crops + 1, 3, 336, 336]``: global view, row-major crops, zero-padded slots."""
        _, height, width = hd.shape
        rows, cols = height // CROP, width // CROP
        global_view = F.interpolate(hd[None], size=(CROP, CROP), mode="bicubic", align_corners=False)
        tiles = hd.reshape(3, rows, CROP, cols, CROP).permute(1, 3, 0, 2, 4).reshape(-1, 3, CROP, CROP)
        slots = hd.new_zeros((num_crops or self.num_crops) + 1, 3, CROP, CROP)
        slots[0] = global_view[0]
        slots[1 : 1 + rows * cols] = tiles
        return slots

    def preprocess(
        self, images, return_tensors="pt", num_crops: int | None = None, image_mean=None, image_std=None, **kwargs
    ) -> BatchFeature:
        """``images``: an image (PIL, numpy, torch) or a list of them -> ``pixel_values [n, num_crops+1, 3, 336,
        336]`` and ``image_sizes [n, 2]`` (padded height, width). ``num_crops``, ``image_mean`` and ``image_std``
        override this processor's settings for this call."""
        if kwargs:
            raise TypeError(
                f"Phi3VImageProcessor does not take {', '.join(sorted(kwargs))}; per call it takes num_crops, "
                "image_mean, image_std and return_tensors."
            )
        if num_crops is not None:
            check_num_crops(num_crops)
        if not isinstance(images, (list, tuple)):
            images = [images]
        hd_images = [self.hd_image(self.to_pil(image), num_crops, image_mean, image_std) for image in images]
        data = {
            "pixel_values": torch.stack([self.crops(hd, num_crops) for hd in hd_images]),
            "image_sizes": torch.tensor([list(hd.shape[1:]) for hd in hd_images], dtype=torch.long),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)

    __call__ = preprocess
