"""Phi-3-Vision processor: text with ``<|image_N|>`` placeholders + images -> model inputs.

Matches the reference processor on one sample: every text chunk around an image tag is tokenised on its own
(so a BOS follows every image), and the N-th image becomes a run of ``-N`` ids as long as its token count.
Unlike the reference it also takes a batch (a list of texts, each with its list of images) and pads it.
"""

import re

import torch
from PIL import Image
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")


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
            f"Image placeholders do not match the {num_images} image(s) given: found {shown}, expected {wanted} "
            "(one tag per image, numbered from 1, in order)."
        )


class Phi3VProcessor(ProcessorMixin):
    def __init__(self, image_processor, tokenizer, chat_template=None):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def num_image_tokens(self, width: int, height: int) -> int:
        """Image tokens for an image of this size (arithmetic only; for length-grouped batching)."""
        return self.image_processor.num_image_tokens(width, height)

    def sample_ids(self, text: str, images: list[Image.Image], image_sizes: list[tuple[int, int]] | None = None):
        """Token ids of one prompt, image tags expanded to runs of ``-N``. ``image_sizes`` (W, H) may stand in for
        the images when only the ids are needed."""
        sizes = image_sizes if image_sizes is not None else [image.size for image in images]
        check_image_tags(text, len(sizes))
        chunks = self.tokenizer(IMAGE_TAG.split(text)[::2]).input_ids
        ids = list(chunks[0])
        for n, ((width, height), chunk) in enumerate(zip(sizes, chunks[1:]), start=1):
            ids += [-n] * self.num_image_tokens(width, height)
            ids += chunk
        return ids

    def __call__(
        self,
        text: str | list[str],
        images: Image.Image | list | None = None,
        padding_side: str | None = None,
        return_tensors: str = "pt",
        **kwargs,
    ) -> BatchFeature:
        """One prompt with its images, or a batch: ``text=[t1, t2]``, ``images=[[imgs of t1], [imgs of t2]]``.
        A batch is padded with the tokenizer's pad id on ``padding_side`` (default: the tokenizer's)."""
        if kwargs:
            raise TypeError(f"Unexpected arguments for Phi3VProcessor: {sorted(kwargs)}.")
        batched = not isinstance(text, str)
        texts = list(text) if batched else [text]
        if images is None:
            per_text = [[] for _ in texts]
        elif batched:
            per_text = [list(imgs) for imgs in images]
        else:
            per_text = [[images] if isinstance(images, Image.Image) else list(images)]
        if len(per_text) != len(texts):
            raise ValueError(f"Got {len(texts)} texts but {len(per_text)} image lists; give one list per text.")

        rows = [self.sample_ids(t, imgs) for t, imgs in zip(texts, per_text)]
        longest = max(len(r) for r in rows)
        side = padding_side or self.tokenizer.padding_side
        input_ids = torch.full((len(rows), longest), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(0, len(row)) if side == "right" else slice(longest - len(row), longest)
            input_ids[i, span] = torch.tensor(row)
            attention_mask[i, span] = 1
        data = {"input_ids": input_ids, "attention_mask": attention_mask}
        all_images = [image for imgs in per_text for image in imgs]
        if all_images:
            data.update(self.image_processor(all_images, return_tensors="pt"))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)
