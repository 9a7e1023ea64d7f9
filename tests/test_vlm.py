"""Phi-3-Vision through the generic transformers / TRL / PEFT APIs: chat templates with typed content, the Auto
classes, the image-text-to-text pipeline and TRL's own vision-language path."""

import http.server
import threading
from functools import partial

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, pipeline

from phi3v_recipe.collator import IGNORE_INDEX
from phi3v_recipe.phi3_v import Phi3VForCausalLM
from phi3v_recipe.phi3_v.processing_phi3_v import HUB_CHAT_TEMPLATE

from .conftest import HUB_MODELS
from .test_processor import photo

QUESTION = "What is shown in this image?"


def user(*items):
    return {"role": "user", "content": list(items)}


def image(**source):
    return {"type": "image", **source}


def text(value):
    return {"type": "text", "text": value}


def say(role, value):
    return {"role": role, "content": [text(value)]}


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return AutoProcessor.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("vlm") / "bag.png"
    photo(400, 300).save(path)
    return path


def render(processor, messages, **kwargs):
    return processor.apply_chat_template(messages, tokenize=False, **kwargs)


def test_typed_single_turn_renders_the_official_prompt(processor):
    typed = render(processor, [user(image(), text(QUESTION))], add_generation_prompt=True)
    assert typed == f"<|user|>\n<|image_1|>\n{QUESTION}<|end|>\n<|assistant|>\n"
    as_string = render(
        processor, [{"role": "user", "content": f"<|image_1|>\n{QUESTION}"}], add_generation_prompt=True
    )
    assert typed == as_string


def test_images_are_numbered_across_the_conversation(processor):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        user(image(), text("Is it red?")),
        say("assistant", "Yes"),
        user(text("And this one: "), image(), text("Which is larger?")),
    ]
    assert render(processor, messages, add_generation_prompt=True) == (
        "<|system|>\nAnswer briefly.<|end|>\n<|user|>\n<|image_1|>\nIs it red?<|end|>\n<|assistant|>\nYes<|end|>\n"
        "<|user|>\nAnd this one: <|image_2|>\nWhich is larger?<|end|>\n<|assistant|>\n"
    )


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "<|image_1|>\nhi"}],
        [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}],
    ],
)
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_string_content_renders_as_the_hub_template(processor, messages, generation_prompt):
    hub = render(processor, messages, add_generation_prompt=generation_prompt, chat_template=HUB_CHAT_TEMPLATE)
    assert render(processor, messages, add_generation_prompt=generation_prompt) == hub


def test_other_content_types_are_refused(processor):
    with pytest.raises(Exception, match="text and image items, not video"):
        render(processor, [user({"type": "video"}, text("q"))])


@pytest.mark.parametrize("name", HUB_MODELS)
def test_real_tokenizers_give_the_same_ids_for_typed_and_string_content(shared, name):
    processor = AutoProcessor.from_pretrained(shared / "hub" / name, num_crops=4)
    pictures = [photo(1000, 750), photo(300, 500, seed=1)]
    typed = [user(image(), text("Is it red?")), say("assistant", "Yes"), user(image(), text("And this?"))]
    string = [
        {"role": "user", "content": "<|image_1|>\nIs it red?"},
        {"role": "assistant", "content": "Yes"},
        {"role": "user", "content": "<|image_2|>\nAnd this?"},
    ]
    ids = [
        processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, processor_kwargs={"images": pictures}
        )
        for messages in (typed, string)
    ]
    assert ids[0] == ids[1]
    assert ids[0][0][:4] == [1, 32010, 29871, 13]  # BOS, <|user|>, "\n" as the hub encodes it after a special token
    assert ids[0][0].count(32044) == processor.num_image_tokens(1000, 750) + processor.num_image_tokens(300, 500)


def test_tokenize_loads_images_from_paths_pil_and_urls(processor, image_path):
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(image_path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{image_path.name}"
    try:
        outputs = [
            processor.apply_chat_template(
                [user(source, text(QUESTION))],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
            )
            for source in (image(path=str(image_path)), image(image=photo(400, 300)), image(url=url))
        ]
    finally:
        server.shutdown()
    expected = processor(
        render(processor, [user(image(), text(QUESTION))], add_generation_prompt=True),
        [photo(400, 300)],
        return_tensors="pt",
    )
    for out in outputs:
        assert set(out) == {"input_ids", "attention_mask", "pixel_values", "image_sizes"}
        assert out["input_ids"].tolist() == expected["input_ids"].tolist()
        torch.testing.assert_close(out["pixel_values"], expected["pixel_values"])


def test_saved_processor_keeps_the_typed_template(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    again = AutoProcessor.from_pretrained(tmp_path)
    assert render(again, [user(image(), text("q"))]) == "<|user|>\n<|image_1|>\nq<|end|>\n"


def test_auto_classes_resolve_phi3_v(tiny_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    assert type(model) is Phi3VForCausalLM
    assert type(AutoModelForCausalLM.from_pretrained(tiny_dir)) is Phi3VForCausalLM


def test_image_text_to_text_pipeline(tiny_dir, image_path):
    pipe = pipeline("image-text-to-text", model=str(tiny_dir))
    from_path = pipe(
        text=[user(image(path=str(image_path)), text(QUESTION))], max_new_tokens=4, return_full_text=False
    )
    from_pil = pipe(
        text=[user(image(image=photo(400, 300)), text(QUESTION))], max_new_tokens=4, return_full_text=False
    )
    assert from_path[0]["generated_text"] == from_pil[0]["generated_text"] != ""

    prompt = f"<|user|>\n<|image_1|>\n{QUESTION}<|end|>\n<|assistant|>\n"
    plain = pipe(images=str(image_path), text=prompt, max_new_tokens=4, return_full_text=False)
    assert plain[0]["generated_text"] == from_path[0]["generated_text"]

    # Batches (left-padded) give what each conversation gives alone.
    chats = [
        [user(image(path=str(image_path)), text(QUESTION))],
        [user(image(image=photo(900, 200, seed=3)), text("Describe the product in a few more words."))],
    ]
    alone = [pipe(text=chat, max_new_tokens=4, return_full_text=False)[0]["generated_text"] for chat in chats]
    batched = pipe(text=chats, max_new_tokens=4, return_full_text=False, batch_size=2)
    assert [out[0]["generated_text"] for out in batched] == alone


def trl_trainer(tiny_dir, rows, tmp_path, **config):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        max_length=None,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        **config,
    )
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor)


def trained_ids(trainer, rows):
    """The ids each row of a batch from the trainer's own collator trains on."""
    batch = trainer.data_collator([dict(row) for row in rows])
    tokenizer = trainer.processing_class.tokenizer
    labels = batch["labels"]
    assert not ((labels == 32044) | ((labels < 0) & (labels != IGNORE_INDEX))).any()  # no image position
    assert (labels[batch["attention_mask"] == 0] == IGNORE_INDEX).all()  # no padding
    for row in labels:
        print("trained:", tokenizer.convert_ids_to_tokens(row[row != IGNORE_INDEX].tolist()))
    return [row[row != IGNORE_INDEX].tolist() for row in labels]


def ids_of(processor, *texts):
    return [i for t in texts for i in processor.tokenizer(t, add_special_tokens=False).input_ids]


def test_trl_sft_trainer_on_messages_and_images_with_its_own_collator(tiny_dir, tmp_path):
    rows = [
        {
            "messages": [user(image(), text(QUESTION)), say("assistant", "A red bag")],
            "images": [photo(400, 300)],
        },
        {
            "messages": [
                {"role": "system", "content": [text("Be brief.")]},
                user(image(), text("Colour?")),
                say("assistant", "Red"),
                user(text("And now?"), image()),
                say("assistant", "Blue"),
            ],
            "images": [photo(300, 500, seed=1), photo(640, 480, seed=2)],
        },
    ]
    trainer = trl_trainer(tiny_dir, rows, tmp_path, assistant_only_loss=True)
    tok = trainer.processing_class
    assert trained_ids(trainer, rows) == [
        ids_of(tok, "A red bag<|end|>\n"),
        ids_of(tok, "Red<|end|>\n", "Blue<|end|>\n"),
    ]
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_trl_prompt_completion_trains_only_the_completion(tiny_dir, tmp_path):
    rows = [
        {
            "prompt": [{"role": "user", "content": QUESTION}],
            "completion": [{"role": "assistant", "content": "A red bag"}],
            "images": [photo(400, 300)],
        },
        {
            "prompt": [{"role": "user", "content": "Colour?"}],
            "completion": [{"role": "assistant", "content": "Red"}],
            "images": [photo(300, 500, seed=1)],
        },
    ]
    trainer = trl_trainer(tiny_dir, rows, tmp_path)
    tok = trainer.processing_class
    assert trained_ids(trainer, rows) == [ids_of(tok, "A red bag<|end|>\n"), ids_of(tok, "Red<|end|>\n")]
    trainer.train()
    assert trainer.state.global_step == 2


def test_trl_plain_language_modeling_never_trains_the_image_positions(tiny_dir, tmp_path):
    """Without assistant_only_loss, TRL's collator sets labels = input_ids (masking only padding), so the image
    positions' <|image|> ids reach the labels: in-vocabulary ids, so nothing indexes out of range, and the model's
    loss never takes them as targets."""
    rows = [{"messages": [user(image(), text(QUESTION)), say("assistant", "A red bag")], "images": [photo(400, 300)]}]
    trainer = trl_trainer(tiny_dir, rows, tmp_path)
    batch = trainer.data_collator([dict(row) for row in rows])
    image_positions = batch["input_ids"] == 32044
    assert (batch["labels"][image_positions] == 32044).all() and image_positions.sum() > 0
    model = trainer.model
    with torch.no_grad():
        as_copied = model(**batch).loss
        masked = model(**{**batch, "labels": batch["labels"].masked_fill(image_positions, IGNORE_INDEX)}).loss
        trained_on_images = torch.nn.functional.cross_entropy(
            model(**batch).logits[0, :-1], batch["labels"][0, 1:]
        )  # what a loss that took the copied ids as targets would be
    torch.testing.assert_close(as_copied, masked)
    assert not torch.allclose(as_copied, trained_on_images)


def test_plain_peft_adapter_saves_and_reloads(tiny_dir, processor, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    inputs = processor(
        render(processor, [user(image(), text(QUESTION))], add_generation_prompt=True),
        [photo(400, 300)],
        return_tensors="pt",
    )
    model = get_peft_model(
        AutoModelForImageTextToText.from_pretrained(tiny_dir),
        LoraConfig(r=4, target_modules=["qkv_proj", "o_proj"], init_lora_weights=False),
    )
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_dir), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, expected)
