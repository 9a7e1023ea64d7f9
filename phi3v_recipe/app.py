"""Try a trained output on a web page: upload images, ask, and read the fine-tuned answer beside the base model's.

    phi3v-recipe app --adapter outputs/demo              # http://127.0.0.1:7860
    phi3v-recipe app --adapter your-hf-name/phi3v-burberry-lora --share
    phi3v-recipe app --adapter outputs/demo --space outputs/demo-space   # a folder that runs as a Hugging Face Space

Loads exactly as ``predict`` does (a folder or a Hub id, the offline cache, ``--base``, ``--num_crops``). The base
model's answer comes from the same model with the adapter disabled, not a second copy in memory. Both answers
stream token by token; a follow-up question keeps each conversation. When the run's recipe is known (its
``run_recipe.json`` in the output folder, or ``--config``), its question is pre-filled, its answer template parses
both answers into a small table beside the truth of a picked example, and the eval split's examples (the run's
``predictions.jsonl``) can be picked. Needs Gradio: ``pip install '.[app]'``.
"""

import json
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .answers import parse_answer
from .arguments import DEFAULT_QUESTION, RecipeArguments, template_fields
from .conversation import assistant_turn, text_of, user_turn
from .errors import ArgumentParser, UserError, run
from .runs import RECIPE_FILE

MAX_IMAGE_PIXELS = 50_000_000
MAX_IMAGES = 8
MAX_QUESTION_CHARS = 2_000
MAX_SECONDS_PER_ANSWER = 60.0  # how long one answer may hold the one model (others wait for the lock)


class AppError(Exception):
    """A bad input on the page: shown there as a message; the server keeps serving."""


@dataclass
class Chat:
    """One conversation about a set of images, as the fine-tuned and the base model each answered it."""

    images: list = field(default_factory=list)
    tuned: list[dict] = field(default_factory=list)  # the conversation with the fine-tuned model's answers
    base: list[dict] = field(default_factory=list)  # the same user turns with the base model's answers
    truth: str | None = None  # the reference answer of a picked example

    def ask(self, question: str) -> None:
        """Add the user's turn (the images go with the first one) to both conversations."""
        turn = user_turn(question, 0 if self.tuned else len(self.images))
        self.tuned.append(turn)
        self.base.append(turn)


def open_image(path: str):
    """A PIL image from an uploaded file, or an AppError that says what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    from .images import to_rgb

    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise AppError(
                    f"{Path(path).name} is {image.width}x{image.height}: too large (over {MAX_IMAGE_PIXELS:,} pixels)."
                )
            return to_rgb(image)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise AppError(f"{Path(path).name} is not an image this page can read (PNG, JPEG, WebP, ...).") from None


def client_files(paths, examples: list[dict]) -> list[str]:
    """The files a client named, each one it uploaded to this page (in Gradio's upload folder) or one of the run's
    example images. Anything else is refused: a client can name any server path in a request, and a path that a
    handler passes on to an output is copied into Gradio's cache and served."""
    from gradio.utils import get_upload_folder

    uploads = Path(get_upload_folder()).resolve()
    shipped = {Path(p).resolve() for example in examples for p in example["images"]}
    files = []
    for path in paths or []:
        resolved = Path(str(path)).resolve()  # symlinks followed: a link in the upload folder to elsewhere is refused
        if not (resolved.is_relative_to(uploads) or resolved in shipped):
            raise AppError(f"{Path(str(path)).name} was not uploaded to this page: upload the image.")
        files.append(str(resolved))
    return files


def start_chat(paths: list[str], truth: str | None = None) -> Chat:
    if not paths:
        raise AppError("Upload an image (or pick an example) first.")
    if len(paths) > MAX_IMAGES:
        raise AppError(f"At most {MAX_IMAGES} images per conversation.")
    return Chat(images=[open_image(p) for p in paths], truth=truth)


class Session:
    """The loaded model (adapter applied) and processor, with what is known of the run's recipe."""

    def __init__(self, model, processor, recipe: RecipeArguments | None = None, examples: list[dict] | None = None):
        self.model, self.processor, self.recipe = model, processor, recipe
        self.examples = examples or []
        self.lock = threading.Lock()  # one generation at a time on the one model

    @property
    def has_adapter(self) -> bool:
        return hasattr(self.model, "disable_adapter")

    def stream(self, messages: list[dict], images: list, base: bool, max_new_tokens: int = 128):
        """The answer to a conversation ending with a user turn, yielded as it grows, from the fine-tuned model or
        (``base``) the same model as its base checkpoint ships (the adapter off; Phi-4-multimodal's own vision
        adapter on)."""
        import contextlib

        from transformers import TextIteratorStreamer

        from .families import family_of_processor
        from .generation import generate_new_tokens

        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        context = family_of_processor(self.processor).as_shipped(self.model)() if base else contextlib.nullcontext()
        failure = []

        def generate():
            try:
                with context:
                    generate_new_tokens(
                        self.model,
                        self.processor,
                        [messages],
                        [images],
                        max_new_tokens,
                        streamer,
                        max_time=MAX_SECONDS_PER_ANSWER,
                    )
            except Exception as err:  # shown on the page; the streamer must still end
                failure.append(err)
                streamer.end()

        with self.lock:
            worker = threading.Thread(target=generate)
            worker.start()
            text = ""
            for piece in streamer:
                text += piece
                yield text.strip()
            worker.join()
        if failure:
            raise AppError(f"Generation failed: {type(failure[0]).__name__}: {failure[0]}")

    def fields(self, tuned: str, base: str | None, truth: str | None) -> list[list[str]]:
        """The answer template's fields, parsed from each answer: [field, fine-tuned, base, truth] rows."""
        if self.recipe is None or self.recipe.data_format not in ("template", "auto"):
            return []
        template = self.recipe.answer_template
        parsed = [parse_answer(text, template) if text else None for text in (tuned, base, truth)]
        rows = []
        for name in template_fields(template):
            rows.append([name, *(p[name] if p else "-" for p in parsed)])
        return rows


def display(messages: list[dict], streaming: str | None = None) -> list[dict]:
    """A conversation as Gradio's Chatbot shows it (text only; the images are shown beside), with the answer being
    streamed (``streaming``) after it while its last turn is still the user's."""
    empty = {"user": " ", "assistant": "(an empty answer: only spaces or special tokens)"}
    shown = [{"role": m["role"], "content": text_of(m).strip() or empty[m["role"]]} for m in messages]
    if messages and messages[-1]["role"] == "user":
        shown.append({"role": "assistant", "content": streaming or " "})
    return shown


def converse(session: Session, chat: Chat, question: str, max_new_tokens: int = 128):
    """Ask a question in a chat: yields the chat after each streamed piece, the fine-tuned answer first, then the
    base model's. The chat's conversations end with both answers."""
    if not question or not question.strip():
        raise AppError("Type a question.")
    if len(question) > MAX_QUESTION_CHARS:
        raise AppError(f"The question is {len(question):,} characters long; at most {MAX_QUESTION_CHARS:,}.")
    chat.ask(question.strip())
    answer = ""
    for answer in session.stream(chat.tuned, chat.images, base=False, max_new_tokens=max_new_tokens):
        yield chat, answer, None
    chat.tuned.append(assistant_turn(answer))
    if session.has_adapter:
        base_answer = ""
        for base_answer in session.stream(chat.base, chat.images, base=True, max_new_tokens=max_new_tokens):
            yield chat, answer, base_answer
        chat.base.append(assistant_turn(base_answer))
        yield chat, answer, base_answer


def read_run(folder: Path) -> tuple[RecipeArguments | None, list[dict]]:
    """The recipe of the run that wrote ``folder`` (its run_recipe.json) and its scored eval examples."""
    import dataclasses

    recipe = None
    if (folder / RECIPE_FILE).is_file():
        settings = json.loads((folder / RECIPE_FILE).read_text())
        keys = {f.name for f in dataclasses.fields(RecipeArguments)}
        recipe = RecipeArguments(**{k: v for k, v in settings.items() if k in keys})
    examples = []
    if (folder / "predictions.jsonl").is_file():
        for line in (folder / "predictions.jsonl").read_text().splitlines()[:20]:
            row = json.loads(line)
            if all(Path(p).is_file() for p in row["images"]):
                examples.append({"images": row["images"], "truth": row["truth"]})
    return recipe, examples


def served_files(examples: list[dict]) -> list[str]:
    """The files the page may serve besides uploads: exactly the example images, each by its own path (a folder
    given to Gradio would serve everything in it: the data table beside the images, any private file put there)."""
    return sorted({str(Path(p).resolve()) for example in examples for p in example["images"]})


def build_app(session: Session, title: str, max_new_tokens: int = 64):
    """The Gradio page for a loaded session."""
    import gradio as gr

    question = session.recipe.question if session.recipe else DEFAULT_QUESTION
    base_label = "Base model (adapter disabled)" if session.has_adapter else "Base model (no adapter to disable)"
    with gr.Blocks(title=title) as page:
        gr.Markdown(
            f"## {title}\nUpload one or several images, ask, and compare the answers. Follow-up questions keep the conversation."
        )
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(file_count="multiple", file_types=["image"], label="Images", elem_id="images")
                gallery = gr.Gallery(
                    label="The images",
                    columns=4,
                    height="auto",
                    object_fit="contain",
                    allow_preview=False,
                    interactive=False,
                    elem_id="gallery",
                )
                ask_box = gr.Textbox(value=question, label="Question", elem_id="question")
                with gr.Row():
                    ask = gr.Button("Ask", variant="primary", elem_id="ask")
                    new = gr.Button("New conversation", elem_id="new")
                status = gr.Markdown(elem_id="status")
                truth_box = gr.Textbox(label="Truth (picked example)", interactive=True, elem_id="truth")
                if session.examples:
                    gr.Examples(
                        examples=[[e["images"], e["truth"]] for e in session.examples],
                        inputs=[files, truth_box],
                        label="The eval split's examples",
                    )
            with gr.Column(scale=2):
                with gr.Row():
                    tuned_chat = gr.Chatbot(label="Fine-tuned", elem_id="tuned", height=320)
                    base_chat = gr.Chatbot(label=base_label, elem_id="base", height=320)
                table = gr.Dataframe(
                    headers=["field", "fine-tuned", "base", "truth"],
                    label="Parsed answer",
                    wrap=True,
                    column_widths=["20%", "27%", "27%", "26%"],
                    elem_id="fields",
                )

        def on_ask(paths, text, truth, chat):
            try:
                paths = client_files(paths, session.examples)
                if chat is None or paths != chat[0]:
                    chat = (paths, start_chat(paths, truth or None))
                for current, tuned, base in converse(session, chat[1], text, max_new_tokens):
                    rows = session.fields(tuned, base, current.truth)
                    yield display(current.tuned, tuned), display(current.base, base), rows, "", chat
            except AppError as err:
                yield gr.update(), gr.update(), gr.update(), f"**{err}**", chat

        def on_new():
            return [], [], [], "", None

        ask.click(
            on_ask, inputs=[files, ask_box, truth_box, state], outputs=[tuned_chat, base_chat, table, status, state]
        )

        def on_files(paths):  # new images: show them and start a new conversation
            try:
                return client_files(paths, session.examples), [], [], [], "", None
            except AppError as err:
                return [], [], [], [], f"**{err}**", None

        new.click(on_new, outputs=[tuned_chat, base_chat, table, status, state])
        files.change(on_files, inputs=[files], outputs=[gallery, tuned_chat, base_chat, table, status, state])
    return page


SPACE_README = """---
title: {title}
emoji: 🖼️
colorFrom: gray
colorTo: blue
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
---

# {title}

Try `{adapter}` (Phi-3-Vision fine-tuned with phi3v-recipe) beside its base model: upload an image and ask.
The Space carries the phi3v-recipe package it runs (`phi3v_recipe/`).
"""
SPACE_APP = """import phi3v_recipe  # the native Phi-3-Vision, registered with transformers
from phi3v_recipe.app import main

main(["--adapter", {adapter!r}, "--host", "0.0.0.0"{extra}])
"""


def write_space(out: Path, adapter: str, base: str | None) -> Path:
    """A folder that runs as a Hugging Face Space: app.py, requirements.txt, README.md and the package."""
    import gradio

    if Path(adapter).is_dir():
        raise UserError(
            f"--adapter {adapter} is a local folder: a Space loads its adapter from the Hub. Push it first "
            "(phi3v-recipe push ...) and pass its Hub id."
        )
    out.mkdir(parents=True, exist_ok=True)
    package = Path(__file__).resolve().parent
    shutil.copytree(package, out / "phi3v_recipe", dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    import tomllib

    project = tomllib.loads((package.parent / "pyproject.toml").read_text())["project"]
    (out / "requirements.txt").write_text(
        "\n".join([*project["dependencies"], f"gradio=={gradio.__version__}"]) + "\n"
    )
    extra = f', "--base", {base!r}' if base else ""
    (out / "app.py").write_text(SPACE_APP.format(adapter=adapter, extra=extra))
    title = adapter.split("/")[-1]
    (out / "README.md").write_text(
        SPACE_README.format(title=title, adapter=adapter, gradio_version=gradio.__version__)
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="A web page to try a trained output beside its base model (Gradio).")
    parser.add_argument("--adapter", required=True, help="A trained output (adapter or full model): folder or Hub id.")
    parser.add_argument("--base", default=None, help="Base model (default: the adapter config's base model).")
    parser.add_argument("--num_crops", type=int, default=None)
    parser.add_argument(
        "--config", default=None, help="The recipe (its question and answer template), if not in the output folder."
    )
    parser.add_argument("--max_new_tokens", type=int, default=64, help="Longest answer (tokens).")
    parser.add_argument("--host", default="127.0.0.1", help="Interface to serve on (default: this machine only).")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="Also serve through a public Gradio link.")
    parser.add_argument(
        "--space", metavar="OUT", default=None, help="Write a Hugging Face Space folder to OUT instead."
    )
    args = parser.parse_args(argv)
    import importlib.util

    if importlib.util.find_spec("gradio") is None:  # found, not imported: it takes seconds, after the checks below
        raise UserError("The app needs Gradio: pip install '.[app]' (or pip install gradio).")
    if args.space:
        out = write_space(Path(args.space), args.adapter, args.base)
        print(
            f"Wrote a Space to {out}; push it with: phi3v-recipe push {out} --repo_id your-hf-name/space-name --repo_type space"
        )
        return
    from .predict import load_for_inference

    model, processor = load_for_inference(args.adapter, args.base, args.num_crops)
    recipe, examples = read_run(Path(args.adapter)) if Path(args.adapter).is_dir() else (None, [])
    if args.config:
        from .config import parse_recipe

        recipe = parse_recipe(["--config", args.config])[0]
    page = build_app(Session(model, processor, recipe, examples), f"phi3v-recipe: {args.adapter}", args.max_new_tokens)
    # Gradio's own lines would tell a command-line user to "set share=True in launch()": ours name the flags.
    page.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        allowed_paths=served_files(examples),
        quiet=True,
        prevent_thread_lock=True,
    )
    print(f"Serving {args.adapter} on {page.local_url}", end="")
    print(f" and {page.share_url}" if page.share_url else " (--share adds a public link; Ctrl-C stops)")
    page.block_thread()


if __name__ == "__main__":
    run(main)
