"""Conversations, labels and batches for supervised fine-tuning on image+text conversations.

An example is a conversation (system / user / assistant turns with typed content: text items and ``{"type":
"image"}`` items, see ``conversation.py``) rendered by the processor's chat template. A single-turn Phi-3-Vision
example is ``<s><|user|>\\n<|image_1|>\\n{question}<|end|>\\n<|assistant|>\\n`` then ``{answer}<|end|>\\n<|endoftext|>``,
as in the official Phi-3-Vision fine-tuning; a Phi-4-multimodal one is ``<|user|><|image|>{question}<|end|><|assistant|>``
then ``{answer}<|end|><|endoftext|>``, as in its sample. Only the assistant turns are trained (their text, ``<|end|>``
and what the template writes after it) and the ``<|endoftext|>`` that closes the conversation: system and user turns,
image positions and padding are all -100 in the labels.
"""

import csv
import sys
from dataclasses import dataclass

import torch
from PIL import Image

from .errors import UserError
from .families import family_of_processor
from .images import open_rgb

IGNORE_INDEX = -100
# What opening an image file raises when the file does not decode (PIL says some in SyntaxError or its bomb error).
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def encode_conversation(processor, messages: list[dict], images: list[Image.Image]) -> dict:
    """``input_ids`` and ``labels`` (lists) of one conversation, plus its image inputs (the family's)."""
    out = processor.apply_chat_template(
        messages,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        processor_kwargs={"images": images},
    )
    ids, mask = list(out["input_ids"][0]), list(out["assistant_masks"][0])
    tokenizer = processor.tokenizer
    eos = tokenizer.eos_token_id
    # A role token is never an answer: `<|assistant|>` strips the whitespace after it, so an answer that starts with
    # a space would otherwise mark it as part of the answer.
    roles = set(tokenizer.convert_tokens_to_ids(["<|system|>", "<|user|>", "<|assistant|>"]))
    if ids[-1] != eos:  # Phi-3's template leaves the closing end-of-text to us (Phi-4's writes it)
        # It is trained after an answer only: after a user turn it would teach the model to stop without answering.
        ids.append(eos)
        mask.append(messages[-1]["role"] == "assistant")
    encoded = {
        "input_ids": ids,
        "labels": [token if trained and token not in roles else IGNORE_INDEX for token, trained in zip(ids, mask)],
    }
    if images:
        encoded |= {key: out[key] for key in processor.image_processor.model_input_names}
    return encoded


def open_images(paths: list[str]) -> list[Image.Image]:
    """The image files, upright and in 8-bit RGB (see ``images.py``)."""
    return [open_rgb(path) for path in paths]


@dataclass
class VisionSFTCollator:
    """Turns rows with ``images`` (paths) and ``messages`` (a conversation) into a right-padded training batch.

    Runs in the DataLoader workers, so image decoding and the HD transform happen off the training process.
    Padding is dynamic: to the longest row of the batch (rounded up to ``pad_to_multiple_of`` if set).
    """

    processor: object
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    skipped_file: str | None = None  # skipped_rows.csv: a row whose image does not decode is listed there too

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        encoded, unreadable = [], []
        for row in rows:
            try:
                images = open_images(row["images"])
            except UNREADABLE as err:  # the data checks read headers only: a file may still fail here
                unreadable.append((row, err))
                continue
            encoded.append(encode_conversation(self.processor, row["messages"], images))
        if unreadable:
            self.skip(unreadable)
        if not encoded:
            raise UserError(
                f"No row of a batch has images that decode ({unreadable[0][1]}); the rows are listed in "
                f"{self.skipped_file or 'the warnings above'}. Fix or remove those files."
            )
        for example in encoded:
            if self.max_length is not None and len(example["input_ids"]) > self.max_length:
                raise ValueError(
                    f"A row has {len(example['input_ids'])} tokens, over max_length={self.max_length}; prepare_data "
                    "drops such rows, so the data changed after it ran."
                )
        longest = max(len(example["input_ids"]) for example in encoded)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad_id = self.processor.tokenizer.pad_token_id
        input_ids = torch.full((len(encoded), longest), pad_id, dtype=torch.long)
        labels = torch.full((len(encoded), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), longest), dtype=torch.long)
        for i, example in enumerate(encoded):
            n = len(example["input_ids"])
            input_ids[i, :n] = torch.tensor(example["input_ids"])
            labels[i, :n] = torch.tensor(example["labels"])
            attention_mask[i, :n] = 1  # from the real length: the pad id is also the end-of-text id
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        pixels = self.processor.image_processor.model_input_names[0]
        with_images = [example for example in encoded if pixels in example]
        if with_images:
            batch |= family_of_processor(self.processor).batch_images(with_images)
        return batch

    def skip(self, unreadable: list[tuple[dict, Exception]]) -> None:
        """Say each row dropped from a batch for an image that does not decode, and count it in skipped_file."""
        lines = [
            (", ".join(row["images"]), f"unreadable image (at decode): {type(err).__name__}: {err}")
            for row, err in unreadable
        ]
        for images, reason in lines:
            print(f"Skipped a row while training: {images}: {reason}", file=sys.stderr, flush=True)
        if self.skipped_file:
            with open(self.skipped_file, "a", newline="") as f:  # one short append per batch, from any worker
                csv.writer(f).writerows(["", images, reason] for images, reason in lines)
