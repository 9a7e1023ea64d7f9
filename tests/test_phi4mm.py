"""Phi-4-multimodal through the same recipe: its image processor (against transformers' where torchvision is
installed), its prompt and answer-only labels for every data format, its vision LoRA trained with the image
embedding, evaluation against the checkpoint as it ships, predict, merge, and one-line errors for a wrong family or
crop key. The tokenizer is the tiny one (a byte-level BPE with the hub's special-token ids): no Phi-4 tokenizer files
are available here, so the label checks run on it."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from phi3v_recipe.collator import IGNORE_INDEX, VisionSFTCollator, encode_conversation
from phi3v_recipe.conversation import conversation, render
from phi3v_recipe.errors import UserError
from phi3v_recipe.families import phi4mm
from phi3v_recipe.families.phi4mm_images import Phi4MMImageProcessor

from .test_processor import photo
from .test_tasks import FORMAT_ROWS, TWINS, collated_format_row, write_jsonl
from .test_train import ROOT

IMAGE = phi4mm.SPECIAL_IDS["<|image|>"]
SIZES = [(640, 480), (1000, 750), (300, 1200), (2000, 1500), (448, 448), (50, 700), (1999, 37), (3000, 200)]


@pytest.fixture(scope="module")
def processor(tiny4_dir):
    return phi4mm.load_processor(tiny4_dir, crops=1)


@pytest.mark.parametrize("dynamic_hd", [36, 4, 1])
def test_image_processor_is_transformers_own_to_the_bit(dynamic_hd):
    tv = pytest.importorskip("torchvision", reason="transformers' Phi-4 image processor runs on torchvision")
    del tv
    from transformers import Phi4MultimodalImageProcessor

    theirs, ours = Phi4MultimodalImageProcessor(dynamic_hd=dynamic_hd), Phi4MMImageProcessor(dynamic_hd=dynamic_hd)
    for i, (width, height) in enumerate(SIZES):
        image = photo(width, height, seed=i)
        try:
            expected = theirs([image], return_tensors="pt")
        except ValueError:  # too narrow for theirs: too narrow for ours
            with pytest.raises(ValueError, match="too narrow"):
                ours([image])
            continue
        got = ours([image])
        for key in ("image_pixel_values", "image_attention_mask", "image_sizes"):
            assert torch.equal(got[key], expected[key]), (key, width, height)
        assert got["num_img_tokens"].tolist() == expected["num_img_tokens"].tolist()


def test_image_token_counts_by_hand_and_fed_to_the_model(tiny4_dir, processor):
    image_processor = Phi4MMImageProcessor(dynamic_hd=4)
    # 448x448: the global view (16x16 pooled cells, a separator closing each row: 272), one separator, one crop (272)
    assert image_processor([photo(448, 448)])["num_img_tokens"].tolist() == [545]
    # From the size alone (data preparation counts tokens so, without pixel work) as from the processed pixels
    for dynamic_hd in (36, 4, 1):
        for width, height in SIZES[:6]:
            done = image_processor([photo(width, height)], dynamic_hd=dynamic_hd)["num_img_tokens"].tolist()
            assert image_processor.num_image_tokens(width, height, dynamic_hd) == done[0], (width, height, dynamic_hd)
    # Other sizes: counted from the patch mask; the model must find exactly that many positions to fill.
    model = AutoModelForCausalLM.from_pretrained(tiny4_dir).eval()
    for size in [(640, 480), (300, 1200), (60, 60)]:
        messages = conversation("What?", 1)
        inputs = processor(
            [render(processor, messages, add_generation_prompt=True)], [[photo(*size)]], return_tensors="pt"
        )
        assert (inputs["input_ids"] == IMAGE).sum() == processor.num_image_tokens(*size)
        with torch.no_grad():
            model(**inputs)  # transformers' model writes one feature per image position: a wrong count raises


def test_prompt_and_labels_are_the_samples(processor):
    messages = conversation("What is shown in this image?", 1, "A")
    assert (
        render(processor, messages)
        == "<|user|><|image|>What is shown in this image?<|end|><|assistant|>A<|end|><|endoftext|>"
    )
    assert render(processor, messages[:1], add_generation_prompt=True) == (
        "<|user|><|image|>What is shown in this image?<|end|><|assistant|>"
    )
    answer = "Product: Small Black Leather Tote, Category: BAGS, Full Price: 1290"
    encoded = encode_conversation(
        processor, conversation("What is shown in this image?", 1, answer), [photo(640, 480)]
    )
    ids, labels = encoded["input_ids"], encoded["labels"]
    tok = processor.tokenizer
    trained = [label for label in labels if label != IGNORE_INDEX]
    print("trained tokens:", tok.convert_ids_to_tokens(trained))
    # the sample's labels: the answer, <|end|>, <|endoftext|>, and nothing before
    assert trained == tok(answer + "<|end|><|endoftext|>", add_special_tokens=False).input_ids
    first = labels.index(trained[0])
    assert all(label == IGNORE_INDEX for label in labels[:first]) and labels[first:] == ids[first:]
    assert ids[first - 1] == tok.convert_tokens_to_ids("<|assistant|>") and ids[-1] == tok.eos_token_id
    assert ids.count(IMAGE) == processor.num_image_tokens(640, 480)
    assert ids.count(tok.eos_token_id) == 1  # the template closes the conversation; nothing is added twice


@pytest.mark.parametrize("name", sorted(FORMAT_ROWS))
def test_each_format_trains_exactly_its_assistant_turns(tmp_path, processor, name):
    for i, size in enumerate([(64, 48), (40, 90), (50, 50)]):
        photo(*size, seed=i).save(tmp_path / f"p{i}.png")
    path = write_jsonl(tmp_path / f"{name.split()[0]}.jsonl", [FORMAT_ROWS[name]])
    row, batch, trained = collated_format_row(processor, path, name)
    ids, labels, tok = batch["input_ids"][0], batch["labels"][0], processor.tokenizer
    expected = tok("Red<|end|>A square<|end|><|endoftext|>", add_special_tokens=False).input_ids
    assert trained == expected  # both answers, each with its <|end|>, and the closing <|endoftext|>
    assert (ids == IMAGE).sum() == processor.num_image_tokens(64, 48) + processor.num_image_tokens(40, 90)
    assert not (labels[ids == IMAGE] != IGNORE_INDEX).any()
    assert len(ids) == row["length"]  # length grouping and max_length see the whole conversation
    assert batch["image_pixel_values"].shape[:2] == (2, 2)  # two images: the global view and one crop each


def test_a_batch_pads_crop_slots_and_feeds_the_model(tiny4_dir, tmp_path):
    processor = phi4mm.load_processor(tiny4_dir, crops=4)
    rows = []
    for i, size in enumerate([(448, 448), (900, 700)]):  # one crop, then a 2x2 grid
        photo(*size, seed=i).save(tmp_path / f"{i}.png")
        rows.append({"images": [str(tmp_path / f"{i}.png")], "messages": conversation("What?", 1, f"Answer {i}")})
    batch = VisionSFTCollator(processor)(rows)
    assert batch["image_pixel_values"].shape[:2] == (2, 5)
    assert (batch["image_pixel_values"][0, 2:] == 0).all() and (batch["image_attention_mask"][0, 2:] == 1).all()
    model = AutoModelForCausalLM.from_pretrained(tiny4_dir)
    loss = model(**batch).loss
    loss.backward()
    assert (
        torch.isfinite(loss)
        and model.model.embed_tokens_extend.image_embed.img_projection_up.weight.grad.abs().sum() > 0
    )


def test_a_bf16_models_image_embedding_trains_in_fp32_so_that_every_weight_moves(tiny4_dir, tmp_path):
    """In bf16, AdamW's step at the recipe's learning rate is under half a bf16 step of most weights: they would
    never change. The trained copy of the image embedding is fp32 (autocast computes in bf16); the original module
    keeps the model's bf16. SigLIP's pooling head, whose output nothing reads, is not run."""
    from phi3v_recipe.train import train_saved_modules_in_fp32

    processor = phi4mm.load_processor(tiny4_dir, crops=4)
    photo(900, 700, seed=0).save(tmp_path / "a.png")
    batch = VisionSFTCollator(processor)(
        [{"images": [str(tmp_path / "a.png")], "messages": conversation("What?", 1, "A")}]
    )

    def moved(fp32: bool) -> float:
        model = phi4mm.peft_model(
            AutoModelForCausalLM.from_pretrained(tiny4_dir, dtype=torch.bfloat16), None, tiny4_dir
        )
        phi4mm.skip_unused(model.get_base_model())
        if fp32:
            train_saved_modules_in_fp32(model)
        copy = dict(model.named_parameters())
        trained = {n: p for n, p in copy.items() if p.requires_grad and "modules_to_save" in n}
        assert {p.dtype for n, p in copy.items() if "modules_to_save" in n} == {
            torch.float32 if fp32 else torch.bfloat16
        }
        assert {p.dtype for n, p in copy.items() if "original_module" in n} == {torch.bfloat16}
        before = {n: p.detach().clone() for n, p in trained.items()}
        optimizer = torch.optim.AdamW(trained.values(), lr=4e-5, betas=(0.9, 0.95), eps=1e-7, weight_decay=0.01)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(**batch).loss.backward()
        optimizer.step()
        with_grad = [n for n, p in trained.items() if p.grad is not None and p.grad.abs().sum() > 0]
        changed = sum(int((trained[n] != before[n]).sum()) for n in with_grad)
        return changed / sum(trained[n].numel() for n in with_grad)

    assert moved(fp32=True) > 0.99
    assert moved(fp32=False) < 0.9  # the bf16 copy: many weights never move


def test_demo_twin_trains_the_vision_lora_evaluates_against_the_shipped_model_predicts_and_merges(tiny4_dir, tmp_path):
    from phi3v_recipe.evaluate import main as evaluate
    from phi3v_recipe.predict import main as predict
    from phi3v_recipe.synthetic.burberry import write_sample_set
    from phi3v_recipe.train import main as train

    data_file = write_sample_set(tmp_path / "data", rows=24, seed=1)
    common = [
        *("--config", str(ROOT / "recipes/demo_phi4mm.yaml"), "--model_name_or_path", str(tiny4_dir)),
        *("--dataset", str(data_file), "--max_rows", "16", "--eval_fraction", "0.25"),
    ]
    out = tmp_path / "out"
    run = [
        *common,
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--report_to",
        "none",
        "--dataloader_num_workers",
        "0",
    ]
    trainer = train([*run, "--save_strategy", "no", "--logging_steps", "1"])
    assert trainer.state.global_step == 2

    # What trained: the vision LoRA (from vision-lora/, its rank) and the image embedding, nothing else.
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["modules_to_save"] == ["image_embed"]
    shipped = load_file(tiny4_dir / "vision-lora" / "adapter_model.safetensors")
    trained = load_file(out / "adapter_model.safetensors")
    lora = [key for key in shipped if "lora_B" in key]
    assert lora and all(key in trained for key in lora)
    assert any(not torch.equal(shipped[key], trained[key]) for key in lora)  # continued, not replaced
    base = load_file(tiny4_dir / "model.safetensors")
    projection = "model.embed_tokens_extend.image_embed.img_projection_up.weight"
    assert not torch.equal(trained[f"base_model.model.{projection}"], base[projection])
    last_layer = "model.embed_tokens_extend.image_embed.img_processor.encoder.layers.2.mlp.fc1.weight"
    assert torch.equal(trained[f"base_model.model.{last_layer}"], base[last_layer])  # never reaches the loss: frozen
    assert not any("audio_embed" in key for key in trained)

    metrics = json.loads((out / "metrics.json").read_text())
    assert "base_model_parse_rate" in metrics and "eval_parse_rate" in metrics
    scored = evaluate([*common, "--adapter", str(out), "--max_samples", "2"])
    assert "eval_parse_rate" in scored and "base_model_parse_rate" in scored

    image = str(data_file.parent / "images" / sorted(p.name for p in (data_file.parent / "images").iterdir())[0])
    merged = tmp_path / "merged"
    answers = predict(["--adapter", str(out), "--image", image, "--max_new_tokens", "4", "--merge", str(merged)])
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    assert predict(["--adapter", str(merged), "--image", image, "--max_new_tokens", "4"]) == answers


def test_the_base_answers_as_the_checkpoint_ships(tiny4_dir, tmp_path):
    """The "base model" of an evaluation is the checkpoint with its own vision adapter, not the bare base."""
    from peft import PeftModel

    from phi3v_recipe.generation import generate_new_tokens
    from phi3v_recipe.predict import load_for_inference

    model = AutoModelForCausalLM.from_pretrained(tiny4_dir)
    trained = phi4mm.peft_model(model, None, tiny4_dir)
    with torch.no_grad():
        for param in trained.parameters():
            if param.requires_grad:  # as if trained: every trainable weight moved
                param.add_(0.05 * torch.randn_like(param))
    trained.save_pretrained(tmp_path / "adapter")
    processor = phi4mm.load_processor(tiny4_dir, crops=1)
    processor.save_pretrained(tmp_path / "adapter")
    loaded, processor = load_for_inference(str(tmp_path / "adapter"))
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny4_dir), tiny4_dir / "vision-lora"
    ).eval()
    messages = [conversation("What?", 1)]
    inputs = processor(
        [render(processor, messages[0], add_generation_prompt=True)], [[photo(300, 200)]], return_tensors="pt"
    )
    with torch.no_grad():
        tuned = loaded(**inputs).logits
        with phi4mm.as_shipped(loaded)():
            as_shipped = loaded(**inputs).logits
        assert torch.equal(as_shipped, reference(**inputs).logits)
        assert torch.equal(loaded(**inputs).logits, tuned) and not torch.equal(tuned, as_shipped)
    assert generate_new_tokens(loaded, processor, messages, [[photo(300, 200)]], 3).shape == (1, 3)


def test_a_wrong_family_or_crop_key_is_one_line(tiny4_dir, tmp_path):
    from phi3v_recipe.train import main as train

    other = tmp_path / "llava"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llava"}))
    common = ["--config", str(ROOT / "recipes/demo_phi4mm.yaml"), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(UserError, match=r"is a 'llava' model; this project trains: phi3v .*phi4mm"):
        train([*common, "--model_name_or_path", str(other)])
    with pytest.raises(UserError, match="num_crops is the crop setting of phi3v models; .* takes dynamic_hd"):
        train([*common, "--model_name_or_path", str(tiny4_dir), "--num_crops", "4"])
    from phi3v_recipe.families import by_name

    with pytest.raises(UserError, match="--family 'phi5' is not one of phi3v, phi4mm"):
        by_name("phi5")


def test_a_checkpoint_without_its_vision_adapter_is_one_line(tiny4_dir, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny4_dir, bare, ignore=shutil.ignore_patterns("vision-lora"))
    with pytest.raises(UserError, match="no readable vision adapter in vision-lora/.*refs/pr/70"):
        phi4mm.peft_model(AutoModelForCausalLM.from_pretrained(bare), None, bare)


def test_saved_processor_is_transformers_own(tiny4_dir, tmp_path):
    processor = phi4mm.load_processor(tiny4_dir, crops=3)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "Phi4MultimodalProcessor"
    assert saved["image_processor"]["image_processor_type"] == "Phi4MultimodalImageProcessor"
    assert phi4mm.load_processor(tmp_path).image_processor.dynamic_hd == 3
    pytest.importorskip("torchvision", reason="transformers' Phi-4 processor needs torchvision")
    from transformers import AutoProcessor

    theirs = AutoProcessor.from_pretrained(tmp_path)
    prompt = "<|user|><|image|>What?<|end|><|assistant|>"
    image = photo(700, 500)
    expected = theirs(text=[prompt], images=[image], return_tensors="pt")
    got = processor([prompt], [image], return_tensors="pt")
    assert torch.equal(expected["input_ids"], got["input_ids"])
    assert torch.equal(expected["image_pixel_values"], got["image_pixel_values"])


def put_in_hub_cache(cache, repo_id: str, folder, commit: str, revision: str) -> None:
    """huggingface_hub's snapshot layout, subfolders included, with only ``revision`` known (no ``main``)."""
    import shutil

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / revision
    ref.parent.mkdir(parents=True)
    ref.write_text(commit)
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir()
    for file in folder.rglob("*"):
        if file.is_file():
            blob = repo / "blobs" / f"{commit}-{file.relative_to(folder).as_posix().replace('/', '-')}"
            shutil.copy(file, blob)
            (snapshot / file.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / file.relative_to(folder)).symlink_to(blob)


def test_a_hub_checkpoint_at_its_pinned_revision_trains_and_predicts_offline(tiny4_dir, tmp_path, monkeypatch):
    """What the real recipes do (microsoft/Phi-4-multimodal-instruct at refs/pr/70), from a pre-filled cache with the
    Hub out of reach: the family, processor, model and vision adapter are read at that revision, the adapter records
    it, and predict loads the base at it."""
    from phi3v_recipe.predict import main as predict
    from phi3v_recipe.synthetic.burberry import write_sample_set
    from phi3v_recipe.train import main as train

    cache = tmp_path / "hub"
    put_in_hub_cache(cache, "someone/tiny-phi4mm", tiny4_dir, "c" * 40, "refs/pr/70")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("transformers.utils.hub.HF_HUB_CACHE", str(cache), raising=False)
    monkeypatch.setattr("transformers.utils.hub.constants.HF_HUB_CACHE", str(cache), raising=False)
    data_file = write_sample_set(tmp_path / "data", rows=8, seed=1)
    out = tmp_path / "out"
    model = ["--model_name_or_path", "someone/tiny-phi4mm", "--model_revision", "refs/pr/70"]
    train(
        [
            *("--config", str(ROOT / "recipes/demo_phi4mm.yaml"), *model, "--dataset", str(data_file)),
            *("--output_dir", str(out), "--max_steps", "1", "--eval_fraction", "0", "--eval_strategy", "no"),
            *("--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0"),
        ]
    )
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "someone/tiny-phi4mm" and config["revision"] == "refs/pr/70"
    image = next((data_file.parent / "images").iterdir())
    assert len(predict(["--adapter", str(out), "--image", str(image), "--max_new_tokens", "2"])) == 1


def test_the_model_card_loads_a_phi4mm_adapter_on_its_pinned_base(tmp_path):
    from phi3v_recipe.arguments import RecipeArguments
    from phi3v_recipe.hub import write_model_card

    recipe = RecipeArguments(data_format="template")
    base = phi4mm.HUB_MODEL
    card = write_model_card(
        tmp_path, base, "recipes/phi4mm_burberry_lora.yaml", recipe, {}, "me/x", True, "refs/pr/70", phi4mm
    )
    card = card.read_text()
    print(card)
    assert "tags: [phi4_multimodal," in card and "Base revision: `refs/pr/70`" in card
    assert f'AutoModelForCausalLM.from_pretrained("{base}", revision="refs/pr/70", dtype="auto")' in card
    assert "import phi3v_recipe" not in card and "trust_remote_code" not in card and "phi3_v" not in card


def test_the_bench_restates_the_sample_on_the_rows_ours_trains(tiny4_dir, tmp_path):
    """The sample's dataset (bench/baselines.py) and our collator give one row the same ids and the same trained
    labels, so the bench compares the same work."""
    from phi3v_recipe.bench.baselines import SampleDataset, sample_collate

    processor = phi4mm.load_processor(tiny4_dir, crops=2)
    photo(700, 500).save(tmp_path / "a.png")
    answer = "Product: Tote, Category: BAGS, Full Price: 1290"
    sample = sample_collate(
        [SampleDataset([{"image": str(tmp_path / "a.png"), "question": "What?", "answer": answer}], processor)[0]]
    )
    ours = VisionSFTCollator(processor)(
        [{"images": [str(tmp_path / "a.png")], "messages": conversation("What?", 1, answer)}]
    )
    assert torch.equal(sample["input_ids"], ours["input_ids"]) and torch.equal(sample["labels"], ours["labels"])
    for key in ("image_pixel_values", "image_attention_mask", "image_sizes"):
        assert torch.equal(sample[key], ours[key])


@pytest.mark.slow  # four fresh training processes (about a minute): make test-all runs it
def test_the_phi4mm_bench_runs_every_mode(tmp_path):
    from phi3v_recipe.bench.phi4mm import main

    results = main(
        [
            "--repeats",
            "1",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--rows",
            "12",
            "--batch_size",
            "2",
            "--timeout",
            "300",
            "--out",
            str(tmp_path / "b.json"),
        ]
    )
    rows = {row["mode"]: row for row in results["training"]}
    assert set(rows) == {"phi4mm-sample", "phi4mm-sample-batched", "phi4mm-ours", "phi4mm-ours-shipped"}
    runs = {run["mode"]: run for run in results["runs"]}
    assert (
        runs["phi4mm-ours-shipped"]["per_device_batch"],
        runs["phi4mm-ours-shipped"]["gradient_accumulation_steps"],
    ) == (1, 2)
    # the sample leaves the never-reached SigLIP layer, post-layernorm and pooling head trainable; ours freezes them
    assert rows["phi4mm-sample"]["trainable_params"] - rows["phi4mm-ours"]["trainable_params"] == 17120
    assert set(results["vs_sample"]) == {
        f"{ours} / {sample}"
        for ours in ("phi4mm-ours", "phi4mm-ours-shipped")
        for sample in ("phi4mm-sample", "phi4mm-sample-batched")
    }


@pytest.mark.parametrize("twin", sorted(TWINS))
def test_each_task_twin_trains_phi4mm_and_scores_with_its_metric(twin, tiny4_dir, tmp_path):
    """Every official task's data shape (VQA columns, several images, video frames, chat messages) through the same
    recipe on Phi-4-multimodal: its twin recipe with the Phi-4 crop key, two steps, scored by the task's metric
    beside the checkpoint as it ships."""
    from phi3v_recipe.synthetic import write_task
    from phi3v_recipe.train import main as train

    task, metric = TWINS[twin]
    data_file = write_task(task, tmp_path / "data", rows=16, seed=1)
    recipe = tmp_path / f"demo_{twin}_phi4mm.yaml"
    text = (ROOT / "recipes" / f"demo_{twin}.yaml").read_text()
    recipe.write_text(text.replace("num_crops: 1", "dynamic_hd: 1"))
    out = tmp_path / "out"
    common = ["--config", str(recipe), "--model_name_or_path", str(tiny4_dir), "--dataset", str(data_file)]
    # Phi-4 spends several hundred tokens on an image, more than the Phi-3 twins' max_length allows for 8 frames
    run = [*common, "--output_dir", str(out), "--max_steps", "2", "--eval_fraction", "0.25", "--max_length", "8192"]
    trainer = train(run)
    assert trainer.state.global_step == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"eval_{metric}" in metrics and f"base_model_{metric}" in metrics and f"baseline_{metric}" in metrics


def test_qlora_trains_the_vision_lora_and_the_image_embedding_in_their_dtypes(tiny4_dir, tmp_path):
    """A 4-bit NF4 base (the image embedding and head kept out of 4-bit): TRL casts a quantized model's trainable
    parameters to bf16 for LoRA; the image embedding trained beside it trains in fp32."""
    from phi3v_recipe.synthetic.burberry import write_sample_set
    from phi3v_recipe.train import main as train

    data_file = write_sample_set(tmp_path / "data", rows=12, seed=1)
    out = tmp_path / "out"
    args = ["--config", str(ROOT / "recipes/demo_phi4mm.yaml"), "--model_name_or_path", str(tiny4_dir)]
    args += ["--dataset", str(data_file), "--output_dir", str(out), "--max_steps", "2", "--eval_fraction", "0"]
    args += ["--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0"]
    trainer = train([*args, "--load_in_4bit", "true", "--bnb_4bit_quant_type", "nf4"])
    dtypes = {name: param.dtype for name, param in trainer.model.named_parameters() if param.requires_grad}
    assert {dtype for name, dtype in dtypes.items() if "lora_" in name} == {torch.bfloat16}
    assert {dtype for name, dtype in dtypes.items() if "modules_to_save" in name} == {torch.float32}
    trained = load_file(out / "adapter_model.safetensors")
    base = load_file(tiny4_dir / "model.safetensors")
    projection = "model.embed_tokens_extend.image_embed.img_projection_up.weight"
    assert not torch.equal(trained[f"base_model.model.{projection}"].float(), base[projection])


def test_a_bench_run_past_its_timeout_is_stopped_and_named(tmp_path):
    from phi3v_recipe.bench.phi4mm import main

    args = ["--repeats", "1", "--steps", "1", "--warmup", "1", "--rows", "8", "--modes", "phi4mm-sample"]
    with pytest.raises(UserError, match=r"bench mode phi4mm-sample ran past --timeout 1 s and was stopped"):
        main([*args, "--timeout", "1", "--out", str(tmp_path / "b.json")])
