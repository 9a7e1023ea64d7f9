"""Prompts, labels and batches for supervised fine-tuning on image+text pairs.

A training example is ``<s><|user|>\\n<|image_1|>\\n{question}<|end|>\\n<|assistant|>`` followed by
``{answer}<|end|>\\n<|endoftext|>``, as in the official Phi-3-Vision fine-tuning. Only the answer and its closing
tokens are trained: the prompt, the image positions and the padding are all -100 in the labels.
"""

from dataclasses import dataclass

import torch
from PIL import Image

IGNORE_INDEX = -100


def user_content(question: str, num_images: int) -> str:
    """``<|image_1|>\\n<|image_2|>\\n...{question}``: the images first, each on its own line."""
    return "".join(f"<|image_{n}|>\n" for n in range(1, num_images + 1)) + question


def build_prompt(tokenizer, question: str, num_images: int) -> str:
    """The chat-formatted prompt that ends where the assistant's answer starts."""
    messages = [{"role": "user", "content": user_content(question, num_images)}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_answer(tokenizer, answer: str) -> list[int]:
    """The answer's ids, closed by ``<|end|>`` and end-of-text so the model learns to stop (no BOS)."""
    return tokenizer(f"{answer}<|end|>\n{tokenizer.eos_token}", add_special_tokens=False).input_ids


def encode_example(processor, question: str, answer: str, images: list[Image.Image]) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one example; labels are -100 everywhere but on the answer ids."""
    prompt_ids = processor.sample_ids(build_prompt(processor.tokenizer, question, len(images)), images)
    answer_ids = encode_answer(processor.tokenizer, answer)
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def open_images(paths: list[str]) -> list[Image.Image]:
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


@dataclass
class VisionSFTCollator:
    """Turns rows with ``images`` (paths), ``question`` and ``answer`` into a right-padded training batch.

    Runs in the DataLoader workers, so image decoding and the HD transform happen off the training process.
    Padding is dynamic: to the longest row of the batch (rounded up to ``pad_to_multiple_of`` if set).
    """

    processor: object
    max_length: int | None = None
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        encoded, images = [], []
        for row in rows:
            row_images = open_images(row["images"])
            ids, labels = encode_example(self.processor, row["question"], row["answer"], row_images)
            if self.max_length is not None and len(ids) > self.max_length:
                raise ValueError(
                    f"A row has {len(ids)} tokens, over max_length={self.max_length}; prepare_data drops such rows, "
                    "so the data changed after it ran."
                )
            encoded.append((ids, labels))
            images += row_images
        longest = max(len(ids) for ids, _ in encoded)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad_id = self.processor.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, (ids, row_labels) in enumerate(encoded):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(ids)] = torch.tensor(row_labels)
            attention_mask[i, : len(ids)] = 1  # from the real length: the pad id is also the end-of-text id
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if images:
            batch.update(self.processor.image_processor(images, return_tensors="pt"))
        return batch
