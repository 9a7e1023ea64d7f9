import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from phi3v_recipe.collator import IGNORE_INDEX, VisionSFTCollator, build_prompt, encode_example

from .test_processor import photo


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return AutoProcessor.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    sizes = {"landscape": (1000, 750), "portrait": (300, 900), "tiny": (5, 5), "wide": (1200, 37)}
    paths = {}
    for i, (name, size) in enumerate(sizes.items()):
        paths[name] = str(folder / f"{name}.png")
        photo(*size, seed=i).save(paths[name])
    return paths


def test_prompt_uses_the_chat_template(processor):
    prompt = build_prompt(processor.tokenizer, "What is shown in this image?", 2)
    assert prompt == "<|user|>\n<|image_1|>\n<|image_2|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n"


def test_labels_train_only_the_answer(processor):
    answer = "Product: Small Black Leather Tote, Category: BAGS, Full Price: 1290"
    ids, labels = encode_example(processor, "What is shown in this image?", answer, [photo(640, 480)])
    tok = processor.tokenizer
    trained = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    print("trained tokens:", tok.convert_ids_to_tokens(trained))
    tokens = tok.convert_ids_to_tokens(trained)
    assert tok.decode(trained[:-4]) == answer
    assert tokens[-4:] == ["<|end|>", "▁", "<0x0A>", "<|endoftext|>"]  # closes like the hub's 32007 29871 13 32000
    first = labels.index(next(label for label in labels if label != IGNORE_INDEX))
    assert all(label == IGNORE_INDEX for label in labels[:first])  # the whole prompt, images included
    assert labels[first:] == ids[first:]  # then every answer token, through <|end|> and <|endoftext|>
    assert ids[first - 1] == tok.convert_tokens_to_ids("<|assistant|>")
    assert ids[-1] == tok.eos_token_id and tok.convert_tokens_to_ids("<|end|>") in labels[first:]
    assert sum(1 for i in ids if i < 0) == processor.num_image_tokens(640, 480)


def test_real_tokenizer_labels_match_the_official_recipe(shared):
    """With the hub tokenizer the closing tokens are <|end|> ▁\\n <|endoftext|> (32007, 29871, 13, 32000)."""
    processor = AutoProcessor.from_pretrained(shared / "hub" / "Phi-3-vision-128k-instruct", num_crops=4)
    ids, labels = encode_example(processor, "What is shown in this image?", "The answer", [photo(64, 48)])
    assert [label for label in labels if label != IGNORE_INDEX] == [450, 1234, 32007, 29871, 13, 32000]


def test_batch_mixes_crop_and_image_counts(processor, image_files):
    rows = [
        {"images": [image_files["landscape"]], "question": "What is shown in this image?", "answer": "A"},
        {"images": [image_files["portrait"], image_files["tiny"]], "question": "Compare.", "answer": "Two things"},
        {"images": [image_files["wide"]], "question": "And this?", "answer": "A long answer with more words"},
    ]
    batch = VisionSFTCollator(processor)(rows)
    singles = [
        encode_example(processor, r["question"], r["answer"], [Image.open(p).convert("RGB") for p in r["images"]])
        for r in rows
    ]
    longest = max(len(ids) for ids, _ in singles)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, longest)
    for row, (ids, labels) in enumerate(singles):
        n = len(ids)
        assert batch["input_ids"][row, :n].tolist() == ids
        assert batch["labels"][row, :n].tolist() == labels
        assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()
        assert (batch["input_ids"][row, n:] == processor.tokenizer.pad_token_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        # The last real token is <|endoftext|> (= the pad id): the mask still counts it.
        assert batch["input_ids"][row, n - 1] == processor.tokenizer.pad_token_id
        assert batch["attention_mask"][row, n - 1] == 1
    assert batch["pixel_values"].shape == (4, 5, 3, 336, 336)  # 1 + 2 + 1 images, num_crops + 1 slots each
    grids = (batch["image_sizes"] // 336).prod(-1).tolist()
    assert len(set(grids)) > 1  # different crop counts in one batch


def test_padding_to_a_multiple(processor, image_files):
    rows = [{"images": [image_files["landscape"]], "question": "Q", "answer": "A"}]
    batch = VisionSFTCollator(processor, pad_to_multiple_of=64)(rows)
    assert batch["input_ids"].shape[1] % 64 == 0
    ids, _ = encode_example(processor, "Q", "A", [Image.open(image_files["landscape"]).convert("RGB")])
    assert batch["attention_mask"].sum() == len(ids)
    assert batch["input_ids"].shape[1] - len(ids) < 64


def test_batch_feeds_the_model(tiny_dir, processor, image_files):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    rows = [
        {"images": [image_files["landscape"]], "question": "Q", "answer": "A"},
        {"images": [image_files["portrait"], image_files["tiny"]], "question": "Q2", "answer": "B C"},
    ]
    batch = VisionSFTCollator(processor)(rows)
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss > 0
