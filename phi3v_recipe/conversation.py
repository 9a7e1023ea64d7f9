"""Conversations: the one place prompts are built and rendered.

A conversation is a list of messages (``system`` / ``user`` / ``assistant``) whose content is a list of typed items,
``{"type": "text", "text": ...}`` or ``{"type": "image"}``, rendered by the processor's chat template: Phi-3-Vision
numbers the images ``<|image_1|>``, ``<|image_2|>``, ... in order of appearance across the conversation;
Phi-4-multimodal writes each as ``<|image|>``.
"""


def text_item(text: str) -> dict:
    return {"type": "text", "text": text}


def image_item() -> dict:
    return {"type": "image", "text": None}  # `text` kept so every item has the same keys (one Arrow struct type)


def user_turn(question: str, num_images: int = 0) -> dict:
    """A user message: the images first, then the question (as the official fine-tuning and the model card)."""
    return {"role": "user", "content": [image_item() for _ in range(num_images)] + [text_item(question)]}


def assistant_turn(answer: str) -> dict:
    return {"role": "assistant", "content": [text_item(answer)]}


def conversation(question: str, num_images: int, answer: str | None = None) -> list[dict]:
    """The messages of a single-turn example: the images, then the question; the answer (if any) replies."""
    messages = [user_turn(question, num_images)]
    if answer is not None:
        messages.append(assistant_turn(answer))
    return messages


def text_of(message: dict) -> str:
    """The text of a message (its text items joined), whether its content is a string or typed items."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(item["text"] for item in content if item["type"] == "text")


def count_images(messages: list[dict]) -> int:
    return sum(item["type"] == "image" for message in messages for item in message["content"])


def last_assistant(messages: list[dict]) -> int:
    """The index of the last assistant turn."""
    return max(i for i, message in enumerate(messages) if message["role"] == "assistant")


def prompt_messages(messages: list[dict]) -> list[dict]:
    """The conversation before its last assistant turn: what the model is asked to continue."""
    return messages[: last_assistant(messages)]


def render(processor, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as text, through the processor's chat template."""
    return processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)


def conversation_length(processor, messages: list[dict], image_sizes: list[tuple[int, int]]) -> int:
    """Tokens of the training example (text + image tokens + the closing end-of-text), from image sizes alone."""
    ids = processor.encode(render(processor, messages), image_sizes)
    return len(ids) + (ids[-1] != processor.tokenizer.eos_token_id)  # Phi-4's template writes the end-of-text
