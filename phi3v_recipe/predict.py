"""Answer questions about images with a base model + a LoRA adapter from a folder or the Hub.

    python -m phi3v_recipe.predict --adapter USER/NAME --image bag.jpg [--image more.jpg] [--question "..."]
    python -m phi3v_recipe.predict --adapter outputs/demo --image bag.jpg --merge outputs/merged
    python -m phi3v_recipe.predict --adapter outputs/demo --image a.png --question "Colour?" --question "And the shape?"
    python -m phi3v_recipe.predict --adapter outputs/demo --messages chat.json [--interactive]

The base model defaults to the one named in the adapter's config. With ``HF_HUB_OFFLINE=1`` everything is read
from the local Hugging Face cache. ``--merge OUT`` writes base + adapter as one model in the hub layout.
"""

import json
from pathlib import Path

from .arguments import DEFAULT_QUESTION
from .conversation import assistant_turn, conversation, count_images, text_of, user_turn
from .errors import ArgumentParser, UserError, run, unloadable_model
from .files import follow_umask


def resolve(repo_or_dir: str, what: str, filenames: tuple[str, ...], revision: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub repo id (at ``revision``), from the cache or downloaded. A clear error
    when it is neither."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    from .hub import ensure_available

    path = Path(repo_or_dir).expanduser()
    if path.is_dir():
        return path
    if path.exists() or repo_or_dir.startswith((".", "/", "~")):
        raise UserError(f"The {what} {repo_or_dir!r} is not a folder.")
    ensure_available(repo_or_dir, what, filenames, revision=revision)
    try:
        return Path(snapshot_download(repo_or_dir, revision=revision))
    except GatedRepoError:
        raise UserError(
            f"The {what} {repo_or_dir!r} is gated: accept its terms on the Hub, then `hf auth login`."
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"The Hub has no {what} {repo_or_dir!r} (or it is private: log in with `hf auth login`)."
        ) from None


def read_adapter_config(adapter_dir: Path, adapter: str) -> dict:
    """The adapter's config, with a clear error when the folder is not a (complete) PEFT adapter."""
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(
            f"{adapter} holds neither an adapter (adapter_config.json) nor a model (config.json and weights), so it "
            "is not a trained output. Train first (phi3v-recipe train --config ...), or give the output_dir of a "
            "finished run."
        )
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise UserError(f"{weights} is missing: the adapter folder is incomplete (was the run interrupted?).")
    from safetensors import safe_open

    try:
        with safe_open(str(weights), "pt") as f:
            f.keys()
    except Exception as err:
        raise UserError(f"{weights} is not a readable safetensors file ({type(err).__name__}: {err}).") from None
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{config_file} is not valid JSON ({err}).") from None


def is_full_model(folder: Path) -> bool:
    """A fully fine-tuned output (config.json and weights, no adapter): it loads as it is."""
    weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    return not (folder / "adapter_config.json").is_file() and (folder / "config.json").is_file() and weights


def load_for_inference(adapter: str, base: str | None = None, num_crops: int | None = None, dtype="auto"):
    """(model, processor) in eval mode: the base model with the adapter applied, or a fully fine-tuned model, on the
    GPU when there is one."""
    adapter_dir = resolve(adapter, "adapter", ("adapter_config.json", "config.json"))  # found before torch's import
    import torch
    from peft import PeftModel

    from .families import family_of

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if is_full_model(adapter_dir):
        if base is not None:
            print(f"Warning: {adapter} is a fully fine-tuned model, not an adapter: --base {base} is not used.")
        processor = family_of(adapter_dir).load_processor(adapter_dir, crops=num_crops)
        return load_model(adapter_dir, adapter, dtype, device), processor
    adapter_config = read_adapter_config(adapter_dir, adapter)
    recorded = adapter_config.get("base_model_name_or_path")
    if base is not None and recorded and base != recorded:
        print(f"Warning: the adapter was trained on {recorded!r}; applying it to {base!r} as asked (--base).")
    base = base or recorded
    if not base:
        raise UserError(f"{adapter} does not name its base model: pass --base MODEL.")
    # The base at the revision it was trained on (Phi-4-multimodal's loads natively only at its recorded one).
    base_dir = resolve(base, "base model", ("config.json",), adapter_config.get("revision"))
    trained, given = family_of_adapter(adapter_dir), family_of(base_dir)
    if trained is not None and trained is not given:
        raise UserError(
            f"{adapter} is a {trained.NAME} adapter (trained on {recorded}), but the base {base} is a {given.NAME} "
            f"model: give it a {trained.NAME} base with --base, or leave --base out to use the one it was trained on."
        )
    has_processor = any(
        (adapter_dir / name).exists() for name in ("processor_config.json", "preprocessor_config.json")
    )
    processor = family_of(base_dir).load_processor(adapter_dir if has_processor else base_dir, crops=num_crops)
    model = PeftModel.from_pretrained(load_model(base_dir, base, dtype, device), adapter_dir).eval()
    return model, processor


def family_of_adapter(adapter_dir: Path):
    """The family whose processor the adapter folder carries (training saves it beside the adapter); None without."""
    from .families import FAMILIES

    file = adapter_dir / "processor_config.json"
    if not file.is_file():
        return None
    saved = json.loads(file.read_text()).get("processor_class")
    for family in FAMILIES.values():
        if saved in {cls.__name__ for cls in family.processor_class().__mro__}:
            return family
    return None


def load_model(folder: Path, name: str, dtype, device):
    """The model in ``folder`` (named ``name`` in errors), in eval mode; a cut-short or mismatched one is one line."""
    from transformers import AutoModelForCausalLM

    from . import register

    register()
    try:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map=device).eval()
    except Exception as err:
        raise unloadable_model(err, name) or err from None


def open_images_or_fail(paths: list[tuple[str, str]]) -> list:
    """The images, each given as (path, where it was named); a missing file or one that is not an image is a
    one-line error naming it and where it came from."""
    from PIL import Image, UnidentifiedImageError

    from .images import open_rgb

    images = []
    for path, named_by in paths:
        if not Path(path).is_file():
            raise UserError(f"{named_by} {path}: no such file.")
        try:
            images.append(open_rgb(path))
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
            raise UserError(f"{named_by} {path}: not a readable image ({type(err).__name__}: {err}).") from None
    return images


def check_merge(adapter: str, out: Path) -> None:
    """Refuse, before anything is loaded, a merge that has nothing to fold or would mix its files with others."""
    if Path(adapter).is_dir() and is_full_model(Path(adapter)):
        raise UserError(
            f"{adapter} is a fully fine-tuned model, not an adapter: there is nothing to merge. It loads as it is "
            "(predict --adapter, or from_pretrained); copy the folder to share it."
        )
    if out.exists() and not out.is_dir():
        raise UserError(f"--merge {out} is a file; give the path of a new (or empty) folder.")
    if out.is_dir() and any(out.iterdir()):
        held = ", ".join(sorted(child.name for child in out.iterdir())[:5])
        raise UserError(
            f"--merge {out} is not empty (it holds {held}); a merged model is written whole into a new or empty "
            "folder, so that it is never mixed with another model's files."
        )


def merge(model, processor, out_dir: str) -> Path:
    """Fold the adapter into the base weights and save a plain Phi-3-Vision in the hub layout."""
    if not hasattr(model, "merge_and_unload"):
        raise UserError("The trained output is a fully fine-tuned model, not an adapter: there is nothing to merge.")
    from .export import base_weight_map, copy_base_files, save_in_shards
    from .families import family_of_processor

    family = family_of_processor(processor)
    merged = model.merge_and_unload()
    base_dir = Path(merged.config._name_or_path)  # the base's local folder or cache snapshot it was loaded from
    state = merged.state_dict()
    weight_map = base_weight_map(base_dir, state) if base_dir.is_dir() else None
    if weight_map is not None:  # the base's shards and index, each tensor where the base has it, in its dtype
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        save_in_shards(state.__getitem__, weight_map, Path(out_dir))
        merged.config.save_pretrained(out_dir)
    else:
        merged.save_pretrained(out_dir)  # safetensors, the hub's parameter names
    follow_umask(out_dir)
    processor.save_pretrained(out_dir)
    if base_dir.is_dir():  # then the folder is the base's, with new weights
        copy_base_files(base_dir, Path(out_dir), family.crop_setting(processor), with_model_files=True)
        print(family.merged_note(base_dir))
    return Path(out_dir)


def reply(model, processor, messages: list[dict], images: list, max_new_tokens: int = 128, stream=True):
    """The model's answer to a conversation that ends with a user turn (streamed to stdout unless ``stream`` is
    False)."""
    from transformers import TextStreamer

    from .generation import generate_new_tokens

    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    new_tokens = generate_new_tokens(model, processor, [messages], [images], max_new_tokens, streamer)
    return processor.decode(new_tokens[0], skip_special_tokens=True).strip()


def answer(model, processor, images: list, question: str, max_new_tokens: int = 128, stream: bool = True):
    """The answer to one question about the images."""
    return reply(model, processor, conversation(question, len(images)), images, max_new_tokens, stream)


def read_messages(path: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """A conversation from a JSON file (a list of messages, or {"messages": [...]}) and the image files its image
    items name (``path``, ``url`` or ``image``), in order, each with where it was named. A relative path is read
    from the JSON file's folder, wherever the command runs."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--messages {path}: no such file.") from None
    except json.JSONDecodeError as err:
        raise UserError(f"--messages {path}: not valid JSON ({err}).") from None
    raw = raw["messages"] if isinstance(raw, dict) else raw
    if not isinstance(raw, list) or not all(isinstance(m, dict) and "role" in m for m in raw):
        raise UserError(f"--messages {path}: expected a list of messages with a role and a content.")
    named = [
        item.get("path") or item.get("url") or item.get("image")
        for message in raw
        if not isinstance(message.get("content"), str)
        for item in message.get("content") or []
        if item.get("type") == "image"
    ]
    folder = Path(path).parent
    where = f"The image item of {path}"
    return raw, [(str(folder / Path(name).expanduser()), where) for name in named if name]


def main(argv: list[str] | None = None) -> list[str]:
    parser = ArgumentParser(description="Answer questions about images with a fine-tuned Phi-3-Vision.")
    parser.add_argument(
        "--adapter", required=True, help="A trained output (adapter, or fully fine-tuned model): folder or Hub id."
    )
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
    if args.merge:
        check_merge(args.adapter, Path(args.merge))
    raw, named = read_messages(args.messages) if args.messages else ([], [])
    paths = named + [(path, "--image") for path in args.image]
    if not paths:
        raise UserError("Give an image: --image PATH (repeat for several), or image items in --messages.")
    images = open_images_or_fail(paths)
    messages = []
    if raw:
        from .data.formats import normalize_messages  # imports transformers: only for a conversation

        messages = normalize_messages(raw, len(images))
    if messages and count_images(messages) != len(images):
        raise UserError(
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
        import resource

        written = merge(model, processor, args.merge)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux
        print(f"Merged model written to {written} (peak memory of this process: {peak:.1f} GiB)")
    return answers


if __name__ == "__main__":
    run(main)
