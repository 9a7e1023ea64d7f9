"""Answer questions about images with a base model + a LoRA adapter from a folder or the Hub.

    python -m phi3v_recipe.predict --adapter USER/NAME --image bag.jpg [--image more.jpg] [--question "..."]
    python -m phi3v_recipe.predict --adapter outputs/demo --image bag.jpg --merge outputs/merged
    python -m phi3v_recipe.predict --adapter outputs/demo --image a.png --question "Colour?" --question "And the shape?"
    python -m phi3v_recipe.predict --adapter outputs/demo --messages chat.json [--interactive]

The base model defaults to the one named in the adapter's config. With ``HF_HUB_OFFLINE=1`` everything is read
from the local Hugging Face cache. ``--merge OUT`` writes base + adapter as one model in the hub layout.
"""

import argparse
import json
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor, TextStreamer

from .collator import open_images
from .conversation import assistant_turn, conversation, count_images, text_of, user_turn
from .data import DEFAULT_QUESTION
from .data.formats import normalize_messages
from .generation import generate_new_tokens


def resolve(repo_or_dir: str, what: str) -> Path:
    """A local folder as is; otherwise a Hub repo id, downloaded (or found in the cache when offline)."""
    if Path(repo_or_dir).is_dir():
        return Path(repo_or_dir)
    try:
        return Path(snapshot_download(repo_or_dir))
    except (RepositoryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, ValueError) as err:
        raise SystemExit(
            f"Cannot find the {what} '{repo_or_dir}': it is not a local folder, and the Hub (or, with "
            f"HF_HUB_OFFLINE=1, the local cache) has no such repository ({type(err).__name__}). Check the id, "
            "log in for a private repository (`hf auth login`), or download it once while online."
        ) from None


def load_for_inference(adapter: str, base: str | None = None, num_crops: int | None = None, dtype="auto"):
    """(model, processor): the base model with the adapter applied, in eval mode."""
    from peft import PeftModel

    adapter_dir = resolve(adapter, "adapter")
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise SystemExit(f"{adapter_dir} has no adapter_config.json: is it a PEFT adapter folder?")
    base = base or json.loads(config_file.read_text())["base_model_name_or_path"]
    base_dir = resolve(base, "base model")
    has_processor = any(
        (adapter_dir / name).exists() for name in ("processor_config.json", "preprocessor_config.json")
    )
    extra = {"num_crops": num_crops} if num_crops is not None else {}
    processor = AutoProcessor.from_pretrained(adapter_dir if has_processor else base_dir, **extra)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    model = PeftModel.from_pretrained(model, adapter_dir).eval()
    return model, processor


def merge(model, processor, out_dir: str) -> Path:
    """Fold the adapter into the base weights and save a plain Phi-3-Vision in the hub layout."""
    merged = model.merge_and_unload()
    merged.save_pretrained(out_dir)  # safetensors, the hub's parameter names
    processor.save_pretrained(out_dir)
    return Path(out_dir)


def reply(model, processor, messages: list[dict], images: list[Image.Image], max_new_tokens: int = 128, stream=True):
    """The model's answer to a conversation that ends with a user turn (streamed to stdout unless ``stream`` is
    False)."""
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    new_tokens = generate_new_tokens(model, processor, [messages], [images], max_new_tokens, streamer)
    return processor.decode(new_tokens[0], skip_special_tokens=True).strip()


def answer(model, processor, images: list[Image.Image], question: str, max_new_tokens: int = 128, stream: bool = True):
    """The answer to one question about the images."""
    return reply(model, processor, conversation(question, len(images)), images, max_new_tokens, stream)


def read_messages(path: str) -> tuple[list[dict], list[str]]:
    """A conversation from a JSON file (a list of messages, or {"messages": [...]}) and the image files its image
    items name (``path``, ``url`` or ``image``), in order."""
    raw = json.loads(Path(path).read_text())
    raw = raw["messages"] if isinstance(raw, dict) else raw
    named = [
        item.get("path") or item.get("url") or item.get("image")
        for message in raw
        if not isinstance(message.get("content"), str)
        for item in message.get("content") or []
        if item.get("type") == "image"
    ]
    return raw, [name for name in named if name]


def main(argv: list[str] | None = None) -> list[str]:
    import phi3v_recipe  # noqa: F401  (registers phi3_v)

    parser = argparse.ArgumentParser(description="Answer questions about images with a fine-tuned Phi-3-Vision.")
    parser.add_argument("--adapter", required=True, help="Adapter folder or Hub repo id.")
    parser.add_argument("--base", default=None, help="Base model (default: the adapter config's base model).")
    parser.add_argument("--image", action="append", default=[], help="An image path; repeat for several.")
    parser.add_argument(
        "--question", action="append", default=[], help="A question; repeat for follow-ups (each sees the history)."
    )
    parser.add_argument("--messages", default=None, help="A JSON conversation to continue (typed or string content).")
    parser.add_argument("--interactive", action="store_true", help="Then read follow-up questions from stdin.")
    parser.add_argument("--num_crops", type=int, default=None)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--merge", metavar="OUT", default=None, help="Also write the merged model to OUT.")
    args = parser.parse_args(argv)
    raw, named = read_messages(args.messages) if args.messages else ([], [])
    paths = named + args.image
    if not paths:
        raise SystemExit("Give an image: --image PATH (repeat for several), or image items in --messages.")
    for path in paths:
        if not Path(path).is_file():
            raise SystemExit(f"--image {path}: no such file.")
    images = open_images(paths)
    messages = normalize_messages(raw, len(images)) if raw else []
    if messages and count_images(messages) != len(images):
        raise SystemExit(
            f"The conversation has {count_images(messages)} image items but {len(images)} images were given "
            "(image items' paths and --image flags): give one image per item."
        )
    questions = args.question or ([] if messages and messages[-1]["role"] == "user" else [DEFAULT_QUESTION])
    model, processor = load_for_inference(args.adapter, args.base, args.num_crops)

    answers = []

    several = len(questions) + args.interactive + bool(messages and messages[-1]["role"] == "user") > 1

    def ask(question: str | None) -> None:
        if question is not None:
            messages.append(user_turn(question, 0 if messages else len(images)))
        if several:
            print(f"Q: {text_of(messages[-1])}")
        text = reply(model, processor, messages, images, args.max_new_tokens)
        messages.append(assistant_turn(text))
        answers.append(text)

    if messages and messages[-1]["role"] == "user":
        ask(None)
    for question in questions:
        ask(question)
    while args.interactive:
        try:
            question = input("Follow-up (empty to stop): ").strip()
        except EOFError:
            break
        if not question:
            break
        ask(question)
    if args.merge:
        print(f"Merged model written to {merge(model, processor, args.merge)}")
    return answers


if __name__ == "__main__":
    main()
