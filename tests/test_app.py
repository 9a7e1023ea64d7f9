"""The app's functions without a browser: inputs checked, answers equal to generating directly with and without the
adapter, follow-ups that keep the conversation, the recipe's fields parsed, the run's examples, the Space folder."""

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoProcessor

from phi3v_recipe.app import (
    AppError,
    Chat,
    Session,
    build_app,
    converse,
    display,
    main,
    read_run,
    served_files,
    start_chat,
    write_space,
)
from phi3v_recipe.arguments import DEFAULT_ANSWER_TEMPLATE, RecipeArguments
from phi3v_recipe.conversation import assistant_turn, user_turn
from phi3v_recipe.errors import UserError
from phi3v_recipe.generation import generate_new_tokens
from phi3v_recipe.hub import main as hub_main
from phi3v_recipe.predict import load_for_inference

from .test_processor import photo

pytest.importorskip("gradio")


def write_random_adapter(base_dir: Path, out: Path) -> Path:
    """A LoRA adapter whose B matrices are random (not zero), so the adapted model answers unlike the base."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=8, lora_alpha=64, target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(out)
    AutoProcessor.from_pretrained(base_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter(tiny_dir, tmp_path_factory):
    return write_random_adapter(tiny_dir, tmp_path_factory.mktemp("app") / "adapter")


@pytest.fixture(scope="module")
def session(adapter):
    model, processor = load_for_inference(str(adapter), num_crops=1)
    recipe = RecipeArguments(question="Name, category and price?", answer_template=DEFAULT_ANSWER_TEMPLATE)
    return Session(model, processor, recipe)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "bag.png"
    photo(300, 200).save(path)
    return path


def direct_answer(model, processor, messages, images, max_new_tokens=8) -> str:
    ids = generate_new_tokens(model, processor, [messages], [images], max_new_tokens)
    return processor.tokenizer.decode(ids[0], skip_special_tokens=True).strip()


def test_bad_inputs_are_messages(tmp_path, image_path):
    with pytest.raises(AppError, match="Upload an image"):
        start_chat([])
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(AppError, match="notes.txt is not an image"):
        start_chat([str(text)])
    huge = tmp_path / "huge.png"
    from PIL import Image

    Image.new("1", (9000, 6000)).save(huge)  # 54 megapixels, a small file
    with pytest.raises(AppError, match="too large"):
        start_chat([str(huge)])
    with pytest.raises(AppError, match="At most 8 images"):
        start_chat([str(image_path)] * 9)
    chat = start_chat([str(image_path)] * 2, truth="t")
    assert len(chat.images) == 2 and chat.truth == "t"


def test_answers_are_the_adapters_and_the_base_models(session, tiny_dir, image_path):
    chat = start_chat([str(image_path)])
    steps = list(converse(session, chat, "What is it?", max_new_tokens=8))
    tuned, base = steps[-1][1], steps[-1][2]
    # streamed: the fine-tuned answer grows first, then the base answer
    assert [s[2] for s in steps].index(base) > 0 and steps[0][2] is None

    messages = [user_turn("What is it?", 1)]
    assert tuned == direct_answer(session.model, session.processor, messages, chat.images)
    base_model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    assert base == direct_answer(base_model, session.processor, messages, chat.images)
    assert tuned != base  # the random adapter changes the answer
    assert hasattr(session.model, "disable_adapter")  # one model in memory: the base answer disables the adapter

    # a follow-up keeps each conversation: the images stay with the first turn
    steps = list(converse(session, chat, "And its price?", max_new_tokens=8))
    assert [m["role"] for m in chat.tuned] == ["user", "assistant", "user", "assistant"]
    assert chat.tuned[1] == assistant_turn(tuned) and chat.base[1] == assistant_turn(base)
    assert chat.tuned[2] == user_turn("And its price?", 0)
    follow_up = [*messages, assistant_turn(tuned), user_turn("And its price?", 0)]
    assert steps[-1][1] == direct_answer(session.model, session.processor, follow_up, chat.images)
    base_follow_up = [*messages, assistant_turn(base), user_turn("And its price?", 0)]
    assert steps[-1][2] == direct_answer(base_model, session.processor, base_follow_up, chat.images)


def test_a_phi4mm_adapter_answers_beside_the_checkpoint_as_it_ships(tiny4_dir, tmp_path, image_path):
    """Phi-4-multimodal in the app: the fine-tuned answer is the adapter's, the base answer the checkpoint's with its
    own vision LoRA (what a user of the base model gets), not the bare base."""
    from peft import PeftModel

    from phi3v_recipe.families import phi4mm

    trained = phi4mm.peft_model(AutoModelForCausalLM.from_pretrained(tiny4_dir), None, tiny4_dir)
    with torch.no_grad():
        for param in trained.parameters():
            if param.requires_grad:
                param.add_(0.2 * torch.randn_like(param))
    trained.save_pretrained(tmp_path / "adapter")
    phi4mm.load_processor(tiny4_dir).save_pretrained(tmp_path / "adapter")
    model, processor = load_for_inference(str(tmp_path / "adapter"), num_crops=1)
    session = Session(model, processor, None)
    chat = start_chat([str(image_path)])
    tuned, base = list(converse(session, chat, "What is it?", max_new_tokens=6))[-1][1:3]
    messages = [user_turn("What is it?", 1)]
    assert tuned == direct_answer(model, processor, messages, chat.images, max_new_tokens=6)
    shipped = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny4_dir), tiny4_dir / "vision-lora")
    assert base == direct_answer(shipped.eval(), processor, messages, chat.images, max_new_tokens=6)
    assert tuned != base


def test_an_empty_question_is_a_message(session, image_path):
    chat = start_chat([str(image_path)])
    with pytest.raises(AppError, match="Type a question"):
        list(converse(session, chat, "  "))
    assert chat.tuned == []


def test_fields_are_parsed_beside_the_truth(session):
    truth = "Product: Check Scarf, Category: SCARVES, Full Price: 390"
    rows = session.fields("Product: Tote, Category: BAGS, Full Price: 1,290", "a bag", truth)
    assert rows == [
        ["title", "Tote", "-", "Check Scarf"],
        ["category3_code", "BAGS", "-", "SCARVES"],
        ["full_price", "1,290", "-", "390"],
    ]
    assert Session(session.model, session.processor, None).fields("x", "y", None) == []


def test_read_run_takes_the_recipe_and_the_examples(tmp_path, image_path):
    (tmp_path / "run_recipe.json").write_text(
        json.dumps(
            {
                "question": "Q?",
                "answer_template": "A: {a}",
                "numeric_fields": [],
                "learning_rate": 1.0,
                "dataset": "d.csv",
            }
        )
    )
    rows = [
        {"images": [str(image_path)], "truth": "A: 1", "prediction": "A: 2"},
        {"images": [str(tmp_path / "gone.png")], "truth": "A: 3", "prediction": "A: 3"},
    ]
    (tmp_path / "predictions.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    recipe, examples = read_run(tmp_path)
    assert recipe.question == "Q?" and recipe.answer_template == "A: {a}" and recipe.dataset == "d.csv"
    assert examples == [{"images": [str(image_path)], "truth": "A: 1"}]  # examples whose images are gone are left out
    assert read_run(tmp_path / "nothing") == (None, [])


def test_the_page_builds(session):
    import gradio as gr

    page = build_app(session, "test")
    assert isinstance(page, gr.Blocks)
    ids = {block.elem_id for block in page.blocks.values()}
    assert {"images", "question", "ask", "tuned", "base", "status", "fields"} <= ids


def test_space_folder(tmp_path, adapter):
    with pytest.raises(UserError, match="local folder"):
        write_space(tmp_path / "space", str(adapter), None)
    out = write_space(tmp_path / "space", "someone/phi3v-adapter", "someone/base")
    app = (out / "app.py").read_text()
    compile(app, "app.py", "exec")
    assert "'someone/phi3v-adapter'" in app and "'--base', 'someone/base'" in app.replace('"', "'")
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\n") and "sdk: gradio" in readme and "app_file: app.py" in readme
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert any(r.startswith("gradio==") for r in requirements) and any(
        r.startswith("transformers") for r in requirements
    )
    assert (out / "phi3v_recipe" / "app.py").is_file() and not list(out.rglob("__pycache__"))


def test_space_through_the_command_and_push_checks(tmp_path, capsys):
    main(["--adapter", "someone/phi3v-adapter", "--space", str(tmp_path / "space")])
    assert "--repo_type space" in capsys.readouterr().out
    with pytest.raises(UserError, match="not a Space folder"):
        hub_main(["push", str(tmp_path), "--repo_id", "someone/space", "--repo_type", "space"])
    with pytest.raises(UserError, match="argument --repo_type: invalid choice: 'dataset'"):  # one line, no usage dump
        hub_main(["push", str(tmp_path / "space"), "--repo_id", "someone/space", "--repo_type", "dataset"])


def test_chat_turns_carry_the_images_once():
    chat = Chat(images=["a", "b"])
    chat.ask("first")
    chat.ask("second")
    assert chat.tuned[0] == user_turn("first", 2) and chat.tuned[1] == user_turn("second", 0)
    assert chat.base == chat.tuned


def test_an_empty_answer_is_said_so():
    shown = display([user_turn("q", 1), assistant_turn("\n ")])
    assert shown[0]["content"] == "q" and shown[1]["content"].startswith("(an empty answer")


def handler(page, name: str):
    return next(block_fn.fn for block_fn in page.fns.values() if block_fn.name == name)


def test_handlers_refuse_files_the_client_did_not_upload(tmp_path):
    """A request can name any server path; a handler that passed one on to the gallery would have Gradio copy it into
    its cache and serve it. Only uploads and the run's example images are taken."""
    secret = tmp_path / "secret.png"
    photo(40, 30).save(secret)
    example = tmp_path / "example.png"
    photo(40, 30, seed=1).save(example)
    page = build_app(Session(object(), None, None, [{"images": [str(example)], "truth": "x"}]), "t")
    gallery, *_, status, _ = handler(page, "on_files")([str(secret)])
    assert gallery == [] and "secret.png was not uploaded to this page" in status
    link = tmp_path / "link.png"  # a link in an allowed place to a file elsewhere is followed, then refused
    link.symlink_to(secret)
    assert handler(page, "on_files")([str(link)])[0] == []
    assert handler(page, "on_files")([str(example)])[0] == [str(example.resolve())]
    replies = list(handler(page, "on_ask")([str(secret)], "What is it?", "", None))
    assert replies == [(gr_update := replies[0][0], gr_update, gr_update, replies[0][3], None)]
    assert "was not uploaded" in replies[0][3]


def test_a_client_on_a_real_server_gets_only_its_uploads(tmp_path):
    import httpx

    secret = tmp_path / "secret.png"
    photo(40, 30).save(secret)
    page = build_app(Session(object(), None, None, []), "t")
    page.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    url = page.local_url.rstrip("/")

    def call(files) -> str:
        event = httpx.post(f"{url}/gradio_api/call/on_files", json={"data": [files]}, timeout=30).json()["event_id"]
        return httpx.get(f"{url}/gradio_api/call/on_files/{event}", timeout=60).text

    try:
        upload = httpx.post(
            f"{url}/gradio_api/upload", files={"files": ("mine.png", secret.read_bytes(), "image/png")}, timeout=30
        ).json()[0]
        shown = call([{"path": upload, "meta": {"_type": "gradio.FileData"}}])
        served = [line for line in shown.splitlines() if line.startswith("data:")][0]
        file_url = json.loads(served[5:])[0][0]["image"]["url"]
        assert httpx.get(file_url, timeout=30).content == secret.read_bytes()  # an upload is shown back
        for named in [
            {"path": str(secret), "meta": {"_type": "gradio.FileData"}},
            {"path": str(secret), "is_stream": False},
            str(secret),
        ]:
            answer = call([named])
            assert "gradio_api/file=" not in answer, answer  # nothing of the server's was put where it is served
        assert httpx.get(f"{url}/gradio_api/file={secret}", timeout=30).status_code == 403
    finally:
        page.close()


def test_the_server_serves_the_example_images_and_nothing_beside_them(tmp_path):
    """The README's layout: the images beside the data table. Raw GETs on a real server reach the examples only."""
    import httpx

    (tmp_path / "images").mkdir()
    example = tmp_path / "images" / "example.png"
    photo(40, 30).save(example)
    photo(40, 30, seed=1).save(tmp_path / "images" / "not-an-example.png")
    (tmp_path / "images" / "notes.txt").write_text("private")
    (tmp_path / "products.csv").write_text("image,title\nimages/example.png,Bag\n")
    examples = [{"images": [str(example)], "truth": "Bag"}]
    page = build_app(Session(object(), None, None, examples), "t")
    page.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, allowed_paths=served_files(examples))
    url = page.local_url.rstrip("/")
    try:
        assert httpx.get(f"{url}/gradio_api/file={example}", timeout=30).content == example.read_bytes()
        for private in ["images/not-an-example.png", "images/notes.txt", "products.csv", "images/", "images"]:
            answer = httpx.get(f"{url}/gradio_api/file={tmp_path / private}", timeout=30)
            assert answer.status_code in (403, 404), (private, answer.status_code)
    finally:
        page.close()


def test_a_long_question_is_refused_and_an_answer_is_bounded_in_time(session, image_path, monkeypatch):
    from phi3v_recipe import app

    chat = start_chat([str(image_path)])
    with pytest.raises(AppError, match="at most 2,000"):
        list(converse(session, chat, "x" * 200_000))
    full = list(converse(session, start_chat([str(image_path)]), "What is it?", max_new_tokens=64))[-1][1]
    monkeypatch.setattr(app, "MAX_SECONDS_PER_ANSWER", 0.0)  # the clock runs out at the first token
    cut = list(converse(session, start_chat([str(image_path)]), "What is it?", max_new_tokens=64))[-1][1]
    assert full.startswith(cut) and len(cut) < len(full)


def serve_app(adapter, port: int, env: dict, *extra: str, **popen):
    """`phi3v-recipe app` serving ``adapter`` on ``port`` of 127.0.0.1, its output piped."""
    import subprocess
    import sys

    command = [
        str(Path(sys.executable).parent / "phi3v-recipe"),
        "app",
        "--adapter",
        str(adapter),
        "--port",
        str(port),
    ]
    return subprocess.Popen(
        [*command, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def test_the_command_says_where_it_serves_in_its_own_words(adapter, tmp_path):
    """Gradio's own start lines told command-line users to 'set share=True in launch()'; the flag is --share."""
    from .conftest import free_port, killed_after
    from .test_train import clean_env

    port = free_port()
    server = serve_app(adapter, port, clean_env(tmp_path), start_new_session=True)
    try:
        with killed_after(server, 120):
            lines = [server.stdout.readline()]
            while lines[-1] and not lines[-1].startswith("Serving"):
                lines.append(server.stdout.readline())
    finally:
        server.terminate()
        server.communicate(timeout=60)
    assert lines[-1] == f"Serving {adapter} on http://127.0.0.1:{port}/ (--share adds a public link; Ctrl-C stops)\n"
    assert not any("share=True" in line for line in lines)
