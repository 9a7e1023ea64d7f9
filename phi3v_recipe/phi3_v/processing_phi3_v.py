"""Phi-3-Vision processor: text with ``<|image_N|>`` placeholders + images -> model inputs.

Matches the reference processor on one sample: every text chunk around an image tag is tokenised on its own
(so a BOS follows every image), and the N-th image becomes a run of ``<|image|>`` ids (32044) as long as its token
count: the reference's ids with every negative id replaced by the in-vocabulary image token, as vLLM writes them.
Beyond the reference it takes a batch (texts with their lists of images, or a flat list of images shared out by
the texts' tags), pads it, loads images given as paths or URLs, truncates without cutting an image, returns token
offsets in the expanded text and where each image placeholder went there (for assistant-only masks), and renders
chat messages with typed content (``{"type": "image"}``) through a chat template of its own. Keyword arguments
follow transformers' processor conventions (``text_kwargs``, ``images_kwargs``, ``common_kwargs`` or flat); one it
does not support is refused by name.
"""

import re

from PIL import Image
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ImageInput, get_image_size
from transformers.processing_utils import (
    AudioKwargs,
    ImagesKwargs,
    MultiModalData,
    ProcessingKwargs,
    ProcessorMixin,
    VideosKwargs,
)

from .image_processing_phi3_v import CROP, Phi3VImageProcessorKwargs, grid_tokens, hd_grid, refuse_near_misses

IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")
PLACEHOLDER = re.compile(r"<\|image_\d+\|>|<\|image\|>")  # a tag, or transformers' <|image|> (processor.image_token)

# The template both hub checkpoints ship in tokenizer_config.json: it only renders string content.
HUB_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{- '<|assistant|>\\n' -}}"
    "{% endif %}"
)

# The same format for string content, byte for byte. Typed content (`{"type": "text"}` / `{"type": "image"}`) is
# rendered in order, each image as `<|image_N|>\n`, numbered across the whole conversation. Assistant turns are
# wrapped in generation markers so that `return_assistant_tokens_mask=True` marks their text and `<|end|>\n`.
CHAT_TEMPLATE = (
    "{%- macro render(content, images) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for item in content -%}"
    "{%- if item['type'] == 'text' -%}{{- item['text'] -}}"
    "{%- elif item['type'] == 'image' -%}{%- set images.count = images.count + 1 -%}"
    "{{- '<|image_' ~ images.count ~ '|>\\n' -}}"
    "{%- else -%}{{- raise_exception('Phi-3-Vision chat messages hold text and image items, not ' ~ item['type']) -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- set images = namespace(count=0) -%}"
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- render(message['content'] or '', images) + '<|end|>\\n' -}}{%- endgeneration -%}"
    "{%- else -%}{{- render(message['content'] or '', images) + '<|end|>\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt and messages[-1]['role'] != 'assistant' -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)


def image_tag_numbers(text: str) -> list[int]:
    """The N of every ``<|image_N|>`` tag in order of appearance."""
    return [int(n) for n in IMAGE_TAG.findall(text)]


def check_image_tags(text: str, num_images: int) -> None:
    """Raise a ValueError unless the text's tags are exactly ``<|image_1|> ... <|image_{num_images}|>`` in order."""
    found = image_tag_numbers(text)
    expected = list(range(1, num_images + 1))
    if found != expected:
        shown = ", ".join(f"<|image_{n}|>" for n in found) or "no image tags"
        wanted = ", ".join(f"<|image_{n}|>" for n in expected) or "no image tags"
        raise ValueError(
            f"Image placeholders do not match the {num_images} image(s) given (the image tokens in the prompts should "
            f"be the same as the number of images): found {shown}, expected {wanted} (one tag per image, numbered "
            "from 1, in order)."
        )


def width_height(image, input_data_format=None) -> tuple[int, int]:
    """(W, H) of a PIL image, numpy array or torch tensor (channels as ``input_data_format`` says, else inferred), as
    transformers' image processors read them."""
    if isinstance(
        image, Image.Image
    ):  # PIL's own (W, H): get_image_size gives (W, H) for it before 5.24, (H, W) since
        return image.size
    height, width = get_image_size(image, channel_dim=input_data_format)
    return width, height


def _is_image(value) -> bool:
    return not isinstance(value, (list, tuple))


class Phi3VProcessorKwargs(ProcessingKwargs, total=False):
    images_kwargs: Phi3VImageProcessorKwargs


# What this processor does with the text and image keyword arguments; any other one is refused by name.
TEXT_KWARGS = {
    "padding": True,
    "padding_side": None,
    "truncation": None,
    "max_length": None,
    "pad_to_multiple_of": None,
    "add_special_tokens": True,
    "return_offsets_mapping": False,
    "return_attention_mask": True,
    "return_mm_token_type_ids": False,
    "return_text_replacement_offsets": False,
    "return_tensors": None,
}
IMAGE_KWARGS = {
    "num_crops",
    "image_mean",
    "image_std",
    "do_rescale",
    "do_convert_rgb",
    "input_data_format",
    "rescale_factor",
    "do_normalize",
    "device",
    "return_tensors",
}
# transformers' video- and audio-only keys: generic callers (apply_chat_template among them) pass them to every
# processor; with no video or audio, which this processor refuses outright, they have nothing to act on.
OTHER_MODALITIES = set(VideosKwargs.__annotations__) | set(AudioKwargs.__annotations__)
OTHER_MODALITIES -= set(ImagesKwargs.__annotations__) | set(TEXT_KWARGS)
GROUPS = {"text_kwargs", "images_kwargs", "common_kwargs", "videos_kwargs", "audio_kwargs", "videos", "audio"}


def check_kwargs(kwargs: dict) -> None:
    """Refuse, by name, any keyword argument the processor would otherwise ignore."""
    if kwargs.get("videos") is not None or kwargs.get("audio") is not None:
        raise ValueError("Phi-3-Vision takes images only: give video as a list of frames (images).")
    unknown = [key for key in kwargs if key not in GROUPS | set(TEXT_KWARGS) | IMAGE_KWARGS | OTHER_MODALITIES]
    for group, known in [("text_kwargs", set(TEXT_KWARGS)), ("images_kwargs", IMAGE_KWARGS)]:
        unknown += [f"{group}[{key!r}]" for key in kwargs.get(group, {}) if key not in known]
    unknown += [f"common_kwargs[{key!r}]" for key in kwargs.get("common_kwargs", {}) if key != "return_tensors"]
    unknown += [group for group in ("videos_kwargs", "audio_kwargs") if kwargs.get(group)]
    if unknown:
        raise TypeError(
            f"Phi3VProcessor does not take {', '.join(unknown)}. Text arguments: {', '.join(TEXT_KWARGS)}; "
            f"image arguments: {', '.join(sorted(IMAGE_KWARGS))}."
        )


class Phi3VProcessor(ProcessorMixin):
    """The image processor and the tokenizer of Phi-3-Vision.

    Batches are left-padded unless ``padding_side`` says otherwise: the padding batched generation needs (training
    collators ask for right padding explicitly). ``add_special_tokens=False`` drops the BOS at the start of a text;
    the BOS after each image is part of the image's layout and always stays.
    """

    image_token = "<|image|>"
    valid_processor_kwargs = Phi3VProcessorKwargs  # what transformers' processor API reads the kwargs with

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        refuse_near_misses(cls.__name__, kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def __init__(self, image_processor, tokenizer, chat_template=None, **kwargs):
        # A checkpoint's own string-only template (the hub's) is replaced by ours, which renders the same strings.
        if chat_template is None or chat_template == HUB_CHAT_TEMPLATE:
            chat_template = CHAT_TEMPLATE
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)
        if tokenizer.chat_template in (None, HUB_CHAT_TEMPLATE):  # so that the tokenizer renders typed content too
            tokenizer.chat_template = chat_template
        tokenizer.padding_side = "left"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if self.image_token_id in (None, tokenizer.unk_token_id):
            raise ValueError(
                f"The tokenizer has no {self.image_token} token (id 32044 in the Phi-3-Vision tokenizers)."
            )

    def num_image_tokens(self, width: int, height: int, num_crops: int | None = None) -> int:
        """Image tokens for an image of this size (arithmetic only; for length-grouped batching)."""
        return self.image_processor.num_image_tokens(width, height, num_crops)

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Placeholder tokens and crops (global view included) per image, for ``image_sizes`` given as (height,
        width), as transformers' serving code and vLLM ask for them."""
        if image_sizes is None:
            return MultiModalData()
        num_crops = self._merge_kwargs(Phi3VProcessorKwargs, **kwargs)["images_kwargs"].get("num_crops")
        num_crops = num_crops or self.image_processor.num_crops
        grids = [hd_grid(width, height, num_crops)[2:] for height, width in image_sizes]
        return MultiModalData(
            num_image_tokens=[self.num_image_tokens(width, height, num_crops) for height, width in image_sizes],
            num_image_patches=[rows * cols + 1 for rows, cols in grids],
        )

    def encode(
        self,
        text: str,
        image_sizes: list[tuple[int, int]],
        add_special_tokens: bool = True,
        return_offsets: bool = False,
        num_crops: int | None = None,
    ):
        """Token ids of one text, each ``<|image_N|>`` expanded to a run of ``<|image|>`` ids as long as the N-th
        image's token count (``image_sizes``: (W, H) per image, no pixels needed). With ``return_offsets``, also the
        (start, end) characters of each token in the expanded text, as transformers' processors give them: the text
        with each image placeholder replaced by its run of ``<|image|>`` (``text_replacement_offsets`` says where
        each went); BOS tokens are empty spans."""
        text = self.numbered_tags(text)
        check_image_tags(text, len(image_sizes))
        pieces = IMAGE_TAG.split(text)[::2]
        tags = list(IMAGE_TAG.finditer(text))
        encoded = self.tokenizer(pieces, return_offsets_mapping=return_offsets)  # a BOS before every piece
        if not add_special_tokens:
            first = self.tokenizer(pieces[0], add_special_tokens=False, return_offsets_mapping=return_offsets)
            encoded["input_ids"][0] = first["input_ids"]
            if return_offsets:
                encoded["offset_mapping"][0] = first["offset_mapping"]
        ids, offsets, grown, size = [], [], 0, len(self.image_token)  # grown: characters the runs added so far
        for n, piece_ids in enumerate(encoded["input_ids"]):
            start = 0
            if n > 0:
                tag = tags[n - 1]
                count = self.num_image_tokens(*image_sizes[n - 1], num_crops)
                ids += [self.image_token_id] * count
                run = tag.start() + grown
                offsets += [(run + k * size, run + (k + 1) * size) for k in range(count)]
                grown += count * size - len(tag.group())
                start = tag.end() + grown
            ids += piece_ids
            if return_offsets:
                offsets += [
                    (start + a, start + b) if b > a else (start, start) for a, b in encoded["offset_mapping"][n]
                ]
        return (ids, offsets) if return_offsets else ids

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        """The run of ``<|image|>`` an image's placeholder becomes, from the image processor's outputs (its padded
        size gives its crop grid)."""
        height, width = (int(side) for side in image_inputs["image_sizes"][image_idx])
        return self.image_token * grid_tokens(height // CROP, width // CROP, self.image_processor.num_img_tokens)

    def replacement_offsets(self, texts: list[str], image_inputs: dict) -> list[list[dict]]:
        """Where each text's image placeholders (``<|image_N|>`` tags or ``<|image|>``) went in its expanded text, as
        transformers' processors give them: ``type``, ``span`` (in the text), ``new_span`` (in the expanded text),
        ``text`` (the placeholder) and ``replacement`` (the run)."""
        count = sum(len(PLACEHOLDER.findall(text)) for text in texts)
        runs = [self.replace_image_token(image_inputs, index) for index in range(count)]
        plain = [PLACEHOLDER.sub(self.image_token, text) for text in texts]  # one <|image|> per image
        _, records = self.get_text_with_replacements(plain, images_replacements=runs)
        for text, row in zip(texts, records):  # spans in the text as given, whichever placeholders it has
            for record, placeholder in zip(row, PLACEHOLDER.finditer(text)):
                record["span"], record["text"] = placeholder.span(), placeholder.group()
        return records

    def numbered_tags(self, text: str) -> str:
        """The text with each ``<|image|>`` placeholder (``processor.image_token``, as transformers' VLM processors
        take them) written as the hub's ``<|image_N|>`` tag, numbered in order; texts with tags are left as they are.
        Both kinds in one text is an error."""
        if self.image_token not in text:
            return text
        if IMAGE_TAG.search(text):
            raise ValueError(f"The text mixes {self.image_token} and <|image_N|> placeholders; use one kind.")
        pieces = text.split(self.image_token)
        return "".join(piece + (f"<|image_{n}|>" if n < len(pieces) else "") for n, piece in enumerate(pieces, 1))

    def sample_ids(
        self, text: str, images: list[Image.Image] | None, image_sizes: list[tuple[int, int]] | None = None
    ):
        """Token ids of one prompt with its images (or their (W, H) sizes), image tags expanded to image-token runs."""
        return self.encode(text, image_sizes if image_sizes is not None else [image.size for image in images])

    def __call__(self, text: str | list[str] | None = None, images: ImageInput | None = None, **kwargs):
        """One prompt with its images, or a batch: ``text=[t1, t2]`` with ``images=[[imgs of t1], [imgs of t2]]`` (or
        one flat list, shared out in order by the tags of each text). Images are PIL images, numpy arrays, torch
        tensors, paths or URLs. A batch is padded to its longest row (or to ``max_length`` with
        ``padding="max_length"``), on the left unless ``padding_side`` says otherwise. As with other transformers
        processors, ``return_tensors="pt"`` asks for tensors and ``images_kwargs={"num_crops": 16}`` (or
        ``num_crops=16``) sets the image processor's settings for this call."""
        check_kwargs(kwargs)
        # A tokenizer built with padding / max_length / truncation settings gives this call its defaults (as in every
        # transformers processor); its padding_side does not: batches pad on the left unless the call says otherwise
        # (the hub tokenizers say "right", for training).
        init = {key: value for key, value in self.tokenizer.init_kwargs.items() if key != "padding_side"}
        merged = self._merge_kwargs(Phi3VProcessorKwargs, tokenizer_init_kwargs=init, **kwargs)
        options = TEXT_KWARGS | {key: value for key, value in merged["text_kwargs"].items() if key in TEXT_KWARGS}
        for key in ("return_text_replacement_offsets", "return_mm_token_type_ids"):
            options[key] = merged.get(key) or options[key]
        images_kwargs = {key: value for key, value in merged["images_kwargs"].items() if key in IMAGE_KWARGS}
        images_kwargs.setdefault("return_tensors", options["return_tensors"])
        if text is None:
            raise ValueError("Phi-3-Vision needs a text with one <|image_N|> placeholder per image.")
        batched = not isinstance(text, str)
        given = list(text) if batched else [text]
        texts = [self.numbered_tags(t) for t in given]
        per_text = self._images_per_text(texts, images, batched)
        per_text = [[self._load_image(image) for image in imgs] for imgs in per_text]

        with_offsets, max_length = options["return_offsets_mapping"], options["max_length"]
        rows = [
            self.encode(
                t,
                [width_height(image, images_kwargs.get("input_data_format")) for image in imgs],
                options["add_special_tokens"],
                with_offsets,
                images_kwargs.get("num_crops"),
            )
            for t, imgs in zip(texts, per_text)
        ]
        ids_rows = [row[0] if with_offsets else row for row in rows]
        offset_rows = [row[1] for row in rows] if with_offsets else None
        if options["truncation"] and max_length is not None:
            for i, ids in enumerate(ids_rows):
                if len(ids) > max_length and self.image_token_id in ids[max_length:]:
                    raise ValueError(
                        f"Text {i} has {len(ids)} tokens (text + image tokens); max_length={max_length} would cut "
                        "through an image. Raise max_length (TRL's SFTConfig defaults to 1024), set it to None, "
                        "or lower num_crops."
                    )
            ids_rows = [ids[:max_length] for ids in ids_rows]
            offset_rows = offset_rows and [offsets[:max_length] for offsets in offset_rows]

        padding = options["padding"]
        longest = max(len(ids) for ids in ids_rows)
        if padding == "max_length" and max_length is not None:
            longest = max(longest, max_length)
        if options["pad_to_multiple_of"]:
            longest = -(-longest // options["pad_to_multiple_of"]) * options["pad_to_multiple_of"]
        side = options["padding_side"] or self.tokenizer.padding_side
        pad_id = self.tokenizer.pad_token_id
        data = {"input_ids": [], "attention_mask": []}
        if offset_rows is not None:
            data["offset_mapping"] = []
        for i, ids in enumerate(ids_rows):
            fill = longest - len(ids) if padding not in (False, "do_not_pad") or len(ids_rows) > 1 else 0
            before, after = (fill, 0) if side == "left" else (0, fill)
            data["input_ids"].append([pad_id] * before + ids + [pad_id] * after)
            data["attention_mask"].append([0] * before + [1] * len(ids) + [0] * after)
            if offset_rows is not None:
                data["offset_mapping"].append([(0, 0)] * before + offset_rows[i] + [(0, 0)] * after)
        if not options["return_attention_mask"]:
            del data["attention_mask"]
        if options["return_mm_token_type_ids"]:
            data["mm_token_type_ids"] = [[int(i == self.image_token_id) for i in row] for row in data["input_ids"]]
        all_images = [image for imgs in per_text for image in imgs]
        image_inputs = self.image_processor(all_images, **images_kwargs) if all_images else {}
        if options["return_text_replacement_offsets"]:
            data["text_replacement_offsets"] = self.replacement_offsets(given, image_inputs)
        out = BatchFeature(
            data=data, tensor_type=options["return_tensors"], skip_tensor_conversion=["text_replacement_offsets"]
        )
        out.update(image_inputs)
        return out

    def _load_image(self, image):
        """A PIL image, numpy array or torch tensor as is (the image processor reads them; a float array stays
        float, so its do_rescale is honoured); a path or URL loaded as transformers does."""
        return self.image_processor.fetch_images(image)

    @staticmethod
    def _images_per_text(texts: list[str], images, batched: bool) -> list[list]:
        if images is None:
            return [[] for _ in texts]
        if _is_image(images):
            images = [images]
        images = list(images)
        if not batched:  # a list of images, or that list nested once (as apply_chat_template passes it)
            return [list(images[0]) if len(images) == 1 and isinstance(images[0], (list, tuple)) else images]
        if all(isinstance(item, (list, tuple)) for item in images):
            if len(images) != len(texts):
                raise ValueError(
                    f"Got {len(texts)} texts but {len(images)} image lists; give one list per text (the image tokens "
                    "in the prompts should be the same as the number of images)."
                )
            return [list(imgs) for imgs in images]
        counts = [len(image_tag_numbers(t)) for t in texts]
        if sum(counts) != len(images):
            raise ValueError(
                f"The texts hold {sum(counts)} <|image_N|> placeholders but {len(images)} images were given (the image "
                "tokens in the prompts should be the same as the number of images)."
            )
        bounds = [sum(counts[:i]) for i in range(len(counts) + 1)]
        return [images[a:b] for a, b in zip(bounds, bounds[1:])]

    def _text_ids(self, ids) -> list[list[int]]:
        """Rows of ids without the image positions (and an older caller's negative ids)."""
        rows = ids.tolist() if hasattr(ids, "tolist") else ids
        if rows and isinstance(rows[0], int):
            rows = [rows]
        return [[i for i in row if i >= 0 and i != self.image_token_id] for row in rows]

    def batch_decode(self, sequences, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(self._text_ids(sequences), **kwargs)

    def decode(self, token_ids, **kwargs) -> str:
        return self.tokenizer.decode(self._text_ids(token_ids)[0], **kwargs)

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs) -> list[str]:
        return self.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)
