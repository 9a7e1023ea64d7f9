"""Phi-4-multimodal's image processing in torch alone (no torchvision), for the machines that lack it.

transformers' ``Phi4MultimodalImageProcessor`` runs on torchvision, which many training images (and this project's
CPU test machine) do not have. This one takes the same steps with torch's own resampling and returns the same
tensors: the image is resized to fit a grid of 448-pixel crops (at most ``dynamic_hd``, chosen by aspect ratio),
padded white at the right and bottom, scaled to [-1, 1]; a 448x448 global view comes first, the crops follow row by
row, and the slots are padded to the batch's longest. ``image_attention_mask`` marks the 14-pixel patches that hold
image rather than padding, and each image's token count follows from it. ``tests/test_phi4mm.py`` compares both
processors where torchvision is installed. It saves as transformers' class, so a saved processor loads there too.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_transforms import to_pil_image
from transformers.image_utils import make_flat_list_of_images

from ..phi3_v.image_processing_phi3_v import FILE_KEYS, KeepsSavedAttributes

TRANSFORMERS_CLASS = "Phi4MultimodalImageProcessor"
# Settings transformers' class saves that this one reads the same way (fixed steps: rescale, normalise, RGB).
FIXED = {"do_convert_rgb", "do_normalize", "do_rescale", "do_resize", "resample", "rescale_factor", "size"}


def grid(width: int, height: int, crop: int, max_crops: int) -> tuple[int, int]:
    """Columns and rows of crops for an image: enough to cover it, else the allowed grid closest in aspect ratio."""
    cols, rows = math.ceil(width / crop), math.ceil(height / crop)
    if cols * rows <= max_crops:
        return cols, rows
    aspect = width / height
    shapes = sorted(
        {(c, r) for c in range(1, max_crops + 1) for r in range(1, max_crops + 1) if c * r <= max_crops},
        key=lambda shape: shape[0] * shape[1],
    )
    best, best_diff = (1, 1), float("inf")
    for c, r in shapes:  # ties go to the larger grid when the image has the pixels to fill half of it
        diff = abs(aspect - c / r)
        if diff < best_diff:
            best, best_diff = (c, r), diff
        elif diff == best_diff and width * height > 0.5 * crop * crop * c * r:
            best = (c, r)
    return best


class Phi4MMImageProcessor(KeepsSavedAttributes, BaseImageProcessor):
    SETTINGS = ["dynamic_hd", "patch_size", "crop_size", "image_mean", "image_std"]
    TAKEN = FIXED
    model_input_names = ["image_pixel_values", "image_sizes", "image_attention_mask"]

    def __init__(
        self,
        dynamic_hd: int = 36,
        patch_size: int = 14,
        crop_size: int = 448,
        image_mean: list[float] = (0.5, 0.5, 0.5),
        image_std: list[float] = (0.5, 0.5, 0.5),
        **kwargs,
    ):
        size = kwargs.pop("size", None) or {"height": crop_size, "width": crop_size}
        if size["height"] != size["width"]:
            raise ValueError(f"Phi-4-multimodal crops are square; the processor config says size={size}.")
        unknown = sorted(set(kwargs) - FILE_KEYS - FIXED)
        if unknown:
            raise TypeError(
                f"Phi4MMImageProcessor does not take {', '.join(unknown)}; its settings are dynamic_hd, patch_size, "
                "crop_size (or size), image_mean and image_std."
            )
        super().__init__(**{k: v for k, v in kwargs.items() if k in FILE_KEYS})
        if dynamic_hd < 1:
            raise ValueError(f"dynamic_hd must be at least 1 (the most crops per image); got {dynamic_hd}.")
        self.dynamic_hd, self.patch_size, self.crop_size = dynamic_hd, patch_size, size["height"]
        self.image_mean, self.image_std = list(image_mean), list(image_std)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["image_processor_type"] = TRANSFORMERS_CLASS
        out["size"] = {"height": out.pop("crop_size"), "width": self.crop_size}
        return out

    def layout(self, width: int, height: int, max_crops: int) -> tuple[int, int, int, int]:
        """Columns and rows of crops for an image of this size, and the size it is resized to inside them."""
        crop = self.crop_size
        cols, rows = grid(width, height, crop, max_crops)
        target_w, target_h = crop * cols, crop * rows
        if target_w / width < target_h / height:
            new_w, new_h = target_w, int(height * target_w / width)
        else:
            new_w, new_h = int(width * target_h / height), target_h
        if min(new_w, new_h) < 10:
            raise ValueError(f"An image of {width}x{height} is too narrow to read (it would be {new_w}x{new_h}).")
        return cols, rows, new_w, new_h

    def tile_masks(self, cols: int, rows: int, new_w: int, new_h: int) -> torch.Tensor:
        """``[rows * cols, cells, cells]``: 1 at the 14-pixel patches of each crop that hold image, 0 at padding."""
        crop, patch = self.crop_size, self.patch_size
        cells = crop // patch  # patches along a crop's side
        pad_w, pad_h = crop * cols - new_w, crop * rows - new_h
        mask = torch.ones(cells * rows, cells * cols)
        if pad_w >= patch:
            mask[:, -(pad_w // patch) :] = 0
        if pad_h >= patch:
            mask[-(pad_h // patch) :, :] = 0
        return mask.reshape(rows, cells, cols, cells).transpose(1, 2).reshape(-1, cells, cells)

    def count_tokens(self, tile_masks: torch.Tensor, cols: int, rows: int) -> int:
        """The image's tokens: the global view's pooled cells with a separator closing each row, one separator,
        then the crops' pooled cells that hold image, with a separator closing each row."""
        cells = self.crop_size // self.patch_size
        half = -(-cells // 2)  # the model pools 2x2 patches into one token
        pooled = tile_masks[:, ::2, ::2].reshape(rows, cols, half, half).transpose(1, 2).reshape(rows * half, -1)
        return (cells // 2) ** 2 + cells // 2 + 1 + int(pooled.sum()) + int(pooled[:, 0].sum())

    def num_image_tokens(self, width: int, height: int, max_crops: int | None = None) -> int:
        """Tokens an image of this size becomes, from its size alone (no pixel work)."""
        cols, rows, new_w, new_h = self.layout(width, height, max_crops or self.dynamic_hd)
        return self.count_tokens(self.tile_masks(cols, rows, new_w, new_h), cols, rows)

    def one(self, image: Image.Image, max_crops: int) -> tuple[torch.Tensor, torch.Tensor, int, list[int]]:
        """One image -> its crops ``[1 + n, 3, crop, crop]`` (global view first), their patch masks, its token count
        and its resized size ``[height, width]``."""
        crop, cells = self.crop_size, self.crop_size // self.patch_size
        image = image.convert("RGB")
        cols, rows, new_w, new_h = self.layout(*image.size, max_crops)
        target_w, target_h = crop * cols, crop * rows
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]  # uint8, as torchvision resizes it
        pixels = F.interpolate(pixels, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        pixels = F.pad(pixels, (0, target_w - new_w, 0, target_h - new_h), value=255)[0]
        # Scaled and normalised in one step, (x - 255 mean) / (255 std), as transformers does: the same floats.
        mean = torch.tensor(self.image_mean).view(3, 1, 1) * 255
        std = torch.tensor(self.image_std).view(3, 1, 1) * 255
        pixels = (pixels.float() - mean) / std
        global_view = F.interpolate(pixels[None], size=(crop, crop), mode="bicubic", align_corners=False)
        tiles = pixels.reshape(3, rows, crop, cols, crop).permute(1, 3, 0, 2, 4).reshape(-1, 3, crop, crop)
        tile_masks = self.tile_masks(cols, rows, new_w, new_h)
        masks = torch.cat([torch.ones(1, cells, cells), tile_masks])
        tokens = self.count_tokens(tile_masks, cols, rows)
        return torch.cat([global_view, tiles]), masks, tokens, [target_h, target_w]

    def preprocess(self, images, return_tensors="pt", dynamic_hd: int | None = None, **kwargs) -> BatchFeature:
        """An image (PIL, numpy, torch) or a list -> ``image_pixel_values [n, slots, 3, 448, 448]``,
        ``image_attention_mask [n, slots, 32, 32]``, ``image_sizes [n, 2]`` and ``num_img_tokens`` (a list)."""
        if kwargs:
            raise TypeError(
                f"Phi4MMImageProcessor does not take {', '.join(sorted(kwargs))}; per call it takes dynamic_hd and "
                "return_tensors."
            )
        images = make_flat_list_of_images(images)  # one list, however the processor nests them per text
        done = [self.one(self.to_pil(image), dynamic_hd or self.dynamic_hd) for image in images]
        slots = max(len(crops) for crops, *_ in done)
        pixels = torch.stack([F.pad(crops, (0, 0, 0, 0, 0, 0, 0, slots - len(crops))) for crops, *_ in done])
        masks = torch.stack([F.pad(m, (0, 0, 0, 0, 0, slots - len(m)), value=1) for _, m, *_ in done])
        data = {
            "image_pixel_values": pixels,
            "image_sizes": torch.tensor([size for *_, size in done], dtype=torch.long),
            "image_attention_mask": masks,
            "num_img_tokens": [tokens for _, _, tokens, _ in done],
        }
        return BatchFeature(data=data, tensor_type=return_tensors)

    __call__ = preprocess

    @staticmethod
    def to_pil(image) -> Image.Image:
        if isinstance(image, Image.Image):
            return image
        if isinstance(image, (np.ndarray, torch.Tensor)):
            return to_pil_image(image)
        raise TypeError(
            f"Phi-4-multimodal takes PIL images, numpy arrays or torch tensors; got {type(image).__name__}."
        )
