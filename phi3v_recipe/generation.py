"""Batched greedy answers for conversations with images (left padding), shared by evaluation, logging and prediction."""

import torch

from .collator import open_images
from .conversation import prompt_messages, render


def stop_token_ids(tokenizer) -> list[int]:
    """Answers are trained to end with ``<|end|>`` then end-of-text: either one stops generation."""
    return [tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.eos_token_id]


@torch.no_grad()
def generate_new_tokens(
    model,
    processor,
    conversations: list[list[dict]],
    images: list[list],
    max_new_tokens: int,
    streamer=None,
    max_time: float | None = None,
    sampling: dict | None = None,
):
    """Greedy continuations of a left-padded batch of conversations (each with its list of images): the new ids only.
    Each conversation ends with the turn to answer; the assistant's reply is generated, for at most ``max_time``
    seconds when given; sampled with the ``sampling`` settings (do_sample, temperature, ...) when given."""
    tokenizer = processor.tokenizer
    prompts = [render(processor, messages, add_generation_prompt=True) for messages in conversations]
    inputs = processor(prompts, images, padding_side="left", return_tensors="pt").to(model.device)
    pixels = processor.image_processor.model_input_names[0]  # pixel_values, or Phi-4's image_pixel_values
    if pixels in inputs:
        inputs[pixels] = inputs[pixels].to(model.dtype)
    out = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        **(sampling or {"do_sample": False}),
        streamer=streamer,
        eos_token_id=stop_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        max_time=max_time,
    )
    return out[:, inputs["input_ids"].shape[1] :]


def generate_answers(model, processor, rows: list[dict], max_new_tokens: int = 64, batch_size: int = 8) -> list[str]:
    """Greedy answers to the last assistant turn of rows with ``images`` (paths) and ``messages``, given the turns
    before it, in order."""
    was_training = model.training
    model.eval()
    answers = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            images = [open_images(row["images"]) for row in chunk]
            conversations = [prompt_messages(row["messages"]) for row in chunk]
            new_tokens = generate_new_tokens(model, processor, conversations, images, max_new_tokens)
            answers += [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        model.train(was_training)
    return answers
