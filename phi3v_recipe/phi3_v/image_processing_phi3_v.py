"""Phi-3-Vision's HD image transform: resize so that the image tiles into at most ``num_crops`` 336x336 crops,
pad with white, normalise, and stack ``[global 336x336 view] + crops`` zero-padded to ``num_crops + 1`` slots.

Resizing and padding follow the reference exactly (PIL bilinear resize, white padding before normalisation,
torch bicubic global view of the normalised padded image); everything after the resize is tensor work.
"""

import difflib
import math

import numpy as np
import PIL
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_transforms import to_pil_image
from transformers.image_utils import ChannelDimension, infer_channel_dimension_format
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
    return grid_tokens(rows, cols, tokens_per_crop)


def grid_tokens(rows: int, cols: int, tokens_per_crop: int = 144) -> int:
    """Image tokens of an image laid out as ``rows x cols`` crops."""
    side = math.isqrt(tokens_per_crop)
    return (rows * cols + 1) * tokens_per_crop + 1 + (rows + 1) * side


BITS = 22  # PIL's fixed-point precision when it resamples 8-bit images (32 - 8 - 2)
# The order of PIL's two passes (each rounded to 8 bits) changes the result: Pillow 12 always runs the horizontal one
# first; Pillow 13's Resample.c may run the vertical one first.
PIL_ORDERS_PASSES = int(PIL.__version__.split(".")[0]) >= 13


def pil_bilinear_taps(in_size: int, out_size: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's bilinear weights along one axis: each output pixel's first input pixel ``[out]`` and its weights as
    PIL's fixed-point integers ``[out, taps]`` (a triangle filter, widened by the scale when shrinking, normalised,
    rounded to ``BITS`` bits)."""
    scale = in_size / out_size
    width = max(scale, 1.0)
    center = (torch.arange(out_size, dtype=torch.float64, device=device) + 0.5) * scale
    first = (center - width + 0.5).floor().clamp(min=0)
    end = (center + width + 0.5).floor().clamp(max=in_size)
    x = first[:, None] + torch.arange(int((end - first).max()), dtype=torch.float64, device=device)
    weights = (1 - ((x - center[:, None] + 0.5) / width).abs()).clamp(min=0) * (x < end[:, None])
    weights = weights / weights.sum(1, keepdim=True)
    return first.long(), (weights * (1 << BITS) + 0.5).floor().to(torch.int32)


def resize_like_pil(pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """8-bit ``[channels, H, W]`` -> ``[channels, height, width]``, bit for bit PIL's ``Image.resize((width,
    height), BILINEAR)``, computed in torch on the tensor's device: PIL's fixed-point weights, its two passes in
    its order, each rounded to 8 bits. (torch's own antialiased bilinear differs from PIL's by up to
    2 levels, on 0.05% to 2.2% of pixels in six sizes tried.)"""
    out = pixels.to(torch.int32)
    passes = [(-1, width), (-2, height)]
    in_height, in_width = pixels.shape[-2:]
    if PIL_ORDERS_PASSES and 0 < in_height - height and in_height - height > (in_width - width) * 2:
        passes.reverse()  # Pillow 13 shrinks the height first when it loses more than twice the width's pixels
    for dim, size in passes:
        if out.shape[dim] == size:
            continue
        first, weights = pil_bilinear_taps(out.shape[dim], size, out.device)
        row = out.movedim(dim, -1)
        total = torch.full((*row.shape[:-1], size), 1 << (BITS - 1), dtype=torch.int32, device=out.device)
        for tap in range(weights.shape[1]):  # past the end the weight is 0: any valid index does
            total += row[..., (first + tap).clamp(max=row.shape[-1] - 1)] * weights[:, tap]
        out = (total >> BITS).clamp(0, 255).movedim(-1, dim)
    return out.to(torch.uint8)


def channels_first(image: Image.Image) -> torch.Tensor:
    """A PIL image's 8-bit values as ``[channels, H, W]`` (grayscale too)."""
    array = np.array(image)
    return torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1)


def is_float(image) -> bool:
    """A float numpy array or torch tensor: read as already scaled to [0, 1]."""
    return isinstance(image, (np.ndarray, torch.Tensor)) and (
        image.is_floating_point() if isinstance(image, torch.Tensor) else np.issubdtype(image.dtype, np.floating)
    )


class Phi3VImageProcessorKwargs(ImagesKwargs, total=False):
    num_crops: int
    num_img_tokens: int


# Keys a saved preprocessor_config.json holds besides the settings: kept (the hub's `auto_map` is written back as
# it was read), never taken for settings.
FILE_KEYS = {"auto_map", "image_processor_type", "processor_class", "feature_extractor_type"}


def check_num_crops(num_crops: int) -> None:
    if not isinstance(num_crops, int) or num_crops < 1:
        raise ValueError(f"num_crops must be a whole number of at least 1, got {num_crops!r}.")


SETTINGS = [
    "num_crops",
    "image_mean",
    "image_std",
    "num_img_tokens",
    "do_convert_rgb",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
]


def settings_said(settings: list[str]) -> str:
    return f"its settings are {', '.join(settings[:-1])} and {settings[-1]}"


def refuse_near_misses(name: str, kwargs: dict, settings=SETTINGS, where="from_pretrained does not take") -> None:
    """``from_pretrained`` drops a keyword it does not know without a word (transformers passes on only the settings
    a processor already has), so ``num_crop=16`` would load 4 crops silently. Any keyword that is nearly one of our
    settings is refused by name; the loading keywords (revision, cache_dir, token, ...) pass."""
    for key in kwargs:
        near = difflib.get_close_matches(key, settings, n=1, cutoff=0.8)
        if near and near[0] != key:
            raise TypeError(f"{name}.{where} {key}: did you mean {near[0]}? ({settings_said(settings)})")


class KeepsSavedAttributes:
    """``from_dict`` for an image processor whose constructor refuses keywords it does not know. ``to_dict`` saves
    every attribute, so one set on an instance (``processor.is_override = True``) is in its saved file; such keys
    come back as attributes, as transformers' image processors keep them. A key that is nearly a setting (a
    hand-edited ``"num_crop": 16``) is refused by name: it would otherwise load as nothing."""

    SETTINGS: list[str]  # the settings the constructor takes
    TAKEN: set[str] = set()  # other keys the constructor takes from a file

    @classmethod
    def from_dict(cls, image_processor_dict: dict, **kwargs):
        taken = set(cls.SETTINGS) | cls.TAKEN | FILE_KEYS
        extra = {key: value for key, value in image_processor_dict.items() if key not in taken}
        refuse_near_misses(cls.__name__, extra, cls.SETTINGS, where="from_pretrained: the saved file's key")
        known = {key: value for key, value in image_processor_dict.items() if key in taken}
        loaded = super().from_dict(known, **kwargs)
        processor = loaded[0] if isinstance(loaded, tuple) else loaded  # (processor, unused) when asked
        for key, value in extra.items():
            setattr(processor, key, value)
        return loaded


class Phi3VImageProcessor(KeepsSavedAttributes, BaseImageProcessor):
    """Phi-3-Vision's HD transform. Images are transformed on the CPU by PIL, as the reference does, or on the device
    given per call (``device="cuda"``) by the same steps in torch, with PIL's resize computed bit for bit
    (``resize_like_pil``): the pixels are the same either way. transformers' torchvision backend slot, though it
    needs torch alone; ``Phi3VImageProcessorPil`` fills the PIL slot."""

    SETTINGS = SETTINGS
    backend = "torchvision"
    valid_kwargs = Phi3VImageProcessorKwargs
    model_input_names = ["pixel_values", "image_sizes"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        refuse_near_misses(cls.__name__, kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def __init__(
        self,
        num_crops: int = 1,
        image_mean: list[float] = OPENAI_CLIP_MEAN,
        image_std: list[float] = OPENAI_CLIP_STD,
        num_img_tokens: int = 144,
        do_convert_rgb: bool = True,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        **kwargs,
    ):
        unknown = sorted(set(kwargs) - FILE_KEYS)
        if unknown:  # a misspelt setting (num_crop=16) would otherwise be stored and ignored
            raise TypeError(f"Phi3VImageProcessor does not take {', '.join(unknown)}; {settings_said(SETTINGS)}.")
        super().__init__(**kwargs)
        check_num_crops(num_crops)
        self.num_crops = num_crops
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.num_img_tokens = num_img_tokens
        self.do_convert_rgb = do_convert_rgb
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize

    def num_image_tokens(self, width: int, height: int, num_crops: int | None = None) -> int:
        """Image tokens for an image of this size at ``num_crops`` (this processor's by default; no pixel work)."""
        return num_image_tokens(width, height, num_crops or self.num_crops, self.num_img_tokens)

    @staticmethod
    def to_pil(image, input_data_format=None) -> Image.Image:
        """A PIL image as is; a numpy array or torch tensor (HWC or CHW, or as ``input_data_format`` says; uint8 or
        floats in [0, 1]) as a PIL image, as transformers' own image processors read them."""
        if isinstance(image, Image.Image):
            return image
        if isinstance(image, (np.ndarray, torch.Tensor)):
            return to_pil_image(image, input_data_format=input_data_format)
        raise TypeError(
            f"Phi-3-Vision takes PIL images, numpy arrays, torch tensors, file paths or URLs; got {type(image).__name__}."
        )

    def hd_image(
        self,
        image,
        num_crops: int | None = None,
        mean=None,
        std=None,
        scale=1 / 255,
        normalize=True,
        convert_rgb=True,
        input_data_format=None,
        device=None,
    ) -> torch.Tensor:
        """One image -> its padded HD tensor ``[channels, rows*336, cols*336]``: 8-bit values times ``scale``,
        white padding, then normalised (``normalize``). Made RGB first (``convert_rgb``: the model reads 3 channels);
        without it the image keeps its own channels. On ``device`` when given (resized by ``resize_like_pil``);
        otherwise on the CPU, resized by PIL itself (the faster there), as the reference does."""
        pixels = None if device is None else self.eight_bit(image, input_data_format, convert_rgb)
        if pixels is None:
            hd = self.hd_image_by_pil(image, num_crops, mean, std, scale, normalize, convert_rgb, input_data_format)
            return hd.to(device)
        pixels = pixels.to(device)
        height, width = pixels.shape[1:]
        new_w, new_h, rows, cols = hd_grid(width, height, num_crops or self.num_crops)
        transposed = width < height
        if transposed:
            pixels = pixels.transpose(1, 2)
            new_w, new_h, rows, cols = new_h, new_w, cols, rows
        return self.padded(resize_like_pil(pixels, new_w, new_h), rows, transposed, mean, std, scale, normalize)

    def hd_image_by_pil(self, image, num_crops, mean, std, scale, normalize, convert_rgb, input_data_format):
        image = self.to_pil(image, input_data_format)
        if convert_rgb:
            image = image.convert("RGB")  # also flattens RGBA, palette and grayscale images
        new_w, new_h, rows, cols = hd_grid(*image.size, num_crops or self.num_crops)
        transposed = image.width < image.height
        if transposed:
            image = image.transpose(Image.Transpose.TRANSPOSE)
            new_w, new_h, rows, cols = new_h, new_w, cols, rows
        resized = channels_first(image.resize((new_w, new_h), Image.Resampling.BILINEAR))
        return self.padded(resized, rows, transposed, mean, std, scale, normalize)

    def eight_bit(self, image, input_data_format, convert_rgb) -> torch.Tensor | None:
        """``[channels, H, W]`` uint8 of an RGB or grayscale image: an 8-bit RGB tensor or array as it is (a tensor
        stays on its device), any other image read as the PIL path reads it. None for the images PIL resizes its own
        way (alpha premultiplied, palettes by nearest neighbour): those take the PIL path."""
        is_8bit_array = isinstance(image, (np.ndarray, torch.Tensor)) and image.dtype in (np.uint8, torch.uint8)
        if is_8bit_array and image.ndim == 3:
            channels_last = (input_data_format or infer_channel_dimension_format(image)) == ChannelDimension.LAST
            tensor = torch.as_tensor(image)
            tensor = tensor.permute(2, 0, 1) if channels_last else tensor
            if tensor.shape[0] == 3:
                return tensor
        image = self.to_pil(image, input_data_format)
        image = image.convert("RGB") if convert_rgb else image
        if image.mode not in ("RGB", "L"):
            return None
        return channels_first(image)

    def padded(self, resized: torch.Tensor, rows: int, transposed: bool, mean, std, scale, normalize) -> torch.Tensor:
        """The resized 8-bit image ``[channels, h, w]`` (its long side along w) -> the HD tensor: times ``scale``,
        padded with white to ``rows`` crops, turned back if the image is taller than wide, normalised."""
        pixels = resized.float() * scale
        pad = rows * CROP - resized.shape[1]
        top = pad // 2
        pixels = F.pad(pixels, (0, 0, top, pad - top), value=255 * scale)  # white
        if transposed:
            pixels = pixels.transpose(1, 2)
        if not normalize:
            return pixels
        mean = torch.tensor(mean or self.image_mean, device=pixels.device).view(-1, 1, 1)
        std = torch.tensor(std or self.image_std, device=pixels.device).view(-1, 1, 1)
        return (pixels - mean) / std

    def crops(self, hd: torch.Tensor, num_crops: int | None = None) -> torch.Tensor:
        """HD tensor -> ``[num_crops + 1, 3, 336, 336]``: global view, row-major crops, zero-padded slots."""
        _, height, width = hd.shape
        rows, cols = height // CROP, width // CROP
        global_view = F.interpolate(hd[None], size=(CROP, CROP), mode="bicubic", align_corners=False)
        channels = hd.shape[0]
        tiles = hd.reshape(channels, rows, CROP, cols, CROP).permute(1, 3, 0, 2, 4).reshape(-1, channels, CROP, CROP)
        slots = hd.new_zeros((num_crops or self.num_crops) + 1, channels, CROP, CROP)
        slots[0] = global_view[0]
        slots[1 : 1 + rows * cols] = tiles
        return slots

    def preprocess(
        self,
        images,
        return_tensors="pt",
        num_crops: int | None = None,
        image_mean=None,
        image_std=None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        do_convert_rgb: bool | None = None,
        input_data_format=None,
        device=None,
        **kwargs,
    ) -> BatchFeature:
        """``images``: an image (PIL, numpy, torch) or a list of them -> ``pixel_values [n, num_crops+1, 3, 336,
        336]`` and ``image_sizes [n, 2]`` (padded height, width). Any setting given here overrides this processor's
        for this call. ``do_rescale`` / ``rescale_factor`` scale 8-bit images; float arrays and tensors are read as
        already in [0, 1] either way (never scaled twice)."""
        if kwargs:
            raise TypeError(
                f"Phi3VImageProcessor does not take {', '.join(sorted(kwargs))}; per call it takes num_crops, "
                "image_mean, image_std, do_rescale, rescale_factor, do_normalize, do_convert_rgb, input_data_format, "
                "device and return_tensors."
            )
        if device is not None and self.backend == "pil":
            raise TypeError(
                "Phi3VImageProcessorPil transforms images on the CPU; for device=, load the image processor with "
                'backend="torchvision" (Phi3VImageProcessor: the same pixels, on the device).'
            )
        do_rescale = self.do_rescale if do_rescale is None else do_rescale
        rescale_factor = self.rescale_factor if rescale_factor is None else rescale_factor
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        do_convert_rgb = self.do_convert_rgb if do_convert_rgb is None else do_convert_rgb
        if num_crops is not None:
            check_num_crops(num_crops)
        if not isinstance(images, (list, tuple)):
            images = [images]
        hd_images = [
            self.hd_image(
                image,
                num_crops,
                image_mean,
                image_std,
                1 / 255 if is_float(image) else rescale_factor if do_rescale else 1.0,  # floats: PIL made them 8-bit
                do_normalize,
                do_convert_rgb,
                input_data_format,
                device,
            )
            for image in images
        ]
        data = {
            "pixel_values": torch.stack([self.crops(hd, num_crops) for hd in hd_images]),
            "image_sizes": torch.tensor([list(hd.shape[1:]) for hd in hd_images], dtype=torch.long),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)

    __call__ = preprocess


class Phi3VImageProcessorPil(Phi3VImageProcessor):
    """The same transform by PIL on the CPU alone (no ``device``): transformers' PIL backend slot. Saved, it is the
    same file as ``Phi3VImageProcessor``'s."""

    backend = "pil"

    def to_dict(self) -> dict:
        return super().to_dict() | {"image_processor_type": "Phi3VImageProcessor"}
