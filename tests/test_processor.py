import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from phi3v_recipe.phi3_v import Phi3VImageProcessor, Phi3VImageProcessorPil, num_image_tokens
from phi3v_recipe.phi3_v.image_processing_phi3_v import hd_grid, resize_like_pil

from . import reference
from .conftest import HUB_MODELS

PROMPT = "<|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n"


def photo(width, height, seed=0, mode="RGB"):
    """A noisy gradient image: every pixel differs, so any resampling or layout slip shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], -1)
    noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy).convert(mode)


def expand(compressed):
    """The fixture's reference ids (negative at image positions) as ours: every negative id made <|image|> (32044)."""
    ids = []
    for item in compressed:
        if isinstance(item, str):
            value, count = item.split(" x ")
            ids += [int(value)] * int(count)
        else:
            ids.append(item)
    return [32044 if i < 0 else i for i in ids]


def test_token_counts_match_fixture(shared):
    cases = json.loads((shared / "fixtures" / "num_img_tokens.json").read_text())
    assert len(cases) > 20
    for case in cases:
        width, height = case["input_wh"]
        resized_w, resized_h, rows, cols = hd_grid(width, height, case["num_crops"])
        assert [resized_h, resized_w] == case["resized_hw"], case
        assert [rows, cols] == case["crops_hw"], case
        assert num_image_tokens(width, height, case["num_crops"]) == case["num_img_tokens"], case


@pytest.mark.parametrize(
    ("size", "num_crops"),
    [
        ((1000, 750), 16),
        ((750, 1000), 16),
        ((1920, 1080), 16),
        ((500, 2000), 4),
        ((100, 100), 4),
        ((5, 5), 4),
        ((1200, 37), 16),
        ((37, 1200), 4),
        ((336, 336), 1),
    ],
)
@pytest.mark.parametrize("device", [None, "cpu"])  # by PIL, or by the same steps in torch on a device
def test_pixels_match_reference(size, num_crops, device):
    image = photo(*size, seed=sum(size))
    ours = Phi3VImageProcessor(num_crops=num_crops)(image, device=device)
    ref_pixels, ref_size = reference.process_image(image, num_crops)

    assert ours["pixel_values"].shape == (1, num_crops + 1, 3, 336, 336)
    assert ours["image_sizes"].tolist() == [ref_size]
    torch.testing.assert_close(ours["pixel_values"][0], ref_pixels, atol=1e-5, rtol=0)
    rows, cols = ref_size[0] // 336, ref_size[1] // 336
    assert ours["pixel_values"][0, 1 + rows * cols :].abs().sum() == 0  # padding slots are zeros


@pytest.mark.parametrize("device", [None, "cpu"])
@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "LA", "CMYK"])
def test_other_image_modes_are_converted(mode, device):
    image = photo(400, 300, mode=mode)
    ours = Phi3VImageProcessor(num_crops=4)(image, device=device)
    ref_pixels, _ = reference.process_image(image, 4)
    torch.testing.assert_close(ours["pixel_values"][0], ref_pixels, atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels", [3, 1])
def test_resize_in_torch_is_pils_bilinear_bit_for_bit(channels):
    """PIL's resize computed in torch (what a device runs) equals PIL's own, growing and shrinking each side,
    to extreme aspect ratios."""
    sizes = [((400, 300), (672, 504)), ((3000, 2000), (1344, 896)), ((640, 480), (336, 252)), ((333, 777), (336, 784)),
             ((1920, 1080), (1680, 945)), ((37, 1999), (8, 448)), ((500, 200), (672, 268)), ((7, 5), (1008, 1008))]  # fmt: skip
    for (width, height), (new_w, new_h) in sizes:
        image = photo(width, height, seed=width, mode="RGB" if channels == 3 else "L")
        expected = np.array(image.resize((new_w, new_h), Image.Resampling.BILINEAR)).reshape(new_h, new_w, channels)
        pixels = torch.from_numpy(np.array(image).reshape(height, width, channels)).permute(2, 0, 1)
        ours = resize_like_pil(pixels, new_w, new_h).permute(1, 2, 0).numpy()
        assert ours.dtype == np.uint8 and np.array_equal(ours, expected), (width, height, new_w, new_h)


def test_both_backends_give_the_same_pixels_for_every_kind_of_image():
    """On a device (torch) and by PIL, and the PIL backend alike: PIL images, 8-bit arrays and tensors either way
    round, floats, portrait images, and kept alpha or palettes (``do_convert_rgb=False``, which PIL resizes its own
    way and so take PIL's path; unnormalised, as their channels are not the three the mean has)."""
    tensor_backend, pil_backend = Phi3VImageProcessor(num_crops=16), Phi3VImageProcessorPil(num_crops=16)
    wide, tall = photo(1000, 700, seed=1), photo(333, 1200, seed=2)
    images = [wide, tall, np.array(wide), torch.from_numpy(np.array(tall)).permute(2, 0, 1), np.array(wide) / 255.0]
    for image in images + [wide.convert("RGBA"), wide.convert("P"), tall.convert("L")]:
        for keep_mode in (False, True):
            settings = {"do_convert_rgb": not keep_mode, "do_normalize": not keep_mode, "return_tensors": "pt"}
            expected = pil_backend(image, **settings)
            for device in (None, "cpu"):
                ours = tensor_backend(image, device=device, **settings)
                assert torch.equal(ours["pixel_values"], expected["pixel_values"]), (type(image), keep_mode, device)
                assert torch.equal(ours["image_sizes"], expected["image_sizes"])
    with pytest.raises(TypeError, match='backend="torchvision"'):
        pil_backend(wide, device="cpu")


def test_token_count_from_size_equals_processed_count():
    processor = Phi3VImageProcessor(num_crops=16)
    for size in [(1000, 750), (750, 1000), (5, 5), (1200, 37), (8000, 50)]:
        out = processor(photo(*size))
        rows, cols = (out["image_sizes"][0] // 336).tolist()
        tokens = (rows * cols + 1) * 144 + 1 + (rows + 1) * 12
        assert processor.num_image_tokens(*size) == tokens


@pytest.mark.parametrize("name", HUB_MODELS)
def test_real_tokenizer_ids_match_fixture(shared, name):
    fixture = json.loads((shared / "fixtures" / "tokenization.json").read_text())
    processor = AutoProcessor.from_pretrained(shared / "hub" / name, num_crops=16)
    assert processor.image_processor.num_crops == 16

    out = processor(fixture["prompt"], [photo(1000, 750)], return_tensors="pt")
    assert out["input_ids"][0].tolist() == expand(fixture["input_ids_compressed"])
    assert out["input_ids"].shape[1] == fixture["total_len"] == 1939
    assert out["attention_mask"].all()

    processor4 = AutoProcessor.from_pretrained(shared / "hub" / name, num_crops=4)
    two = processor4(fixture["two_images_prompt"], [photo(1000, 750), photo(800, 600, seed=1)], return_tensors="pt")
    assert two["input_ids"][0].tolist() == expand(fixture["two_images_input_ids_compressed"])
    assert two["pixel_values"].shape == (2, 5, 3, 336, 336)

    answer = processor.tokenizer(fixture["answer_text"], add_special_tokens=False).input_ids
    assert answer == fixture["answer_ids_no_special"]
    for token, token_id in fixture["special_token_ids"].items():
        assert processor.tokenizer.convert_tokens_to_ids(token) == token_id


def test_tiny_processor_layout(tiny_dir):
    processor = AutoProcessor.from_pretrained(tiny_dir)
    tok = processor.tokenizer
    out = processor(PROMPT, [photo(1000, 750)], return_tensors="pt")
    ids = out["input_ids"][0].tolist()
    n = processor.num_image_tokens(1000, 750)
    user, end, assistant = (tok.convert_tokens_to_ids(t) for t in ["<|user|>", "<|end|>", "<|assistant|>"])
    assert (user, end, assistant, tok.pad_token_id) == (32010, 32007, 32001, 32000)
    # BOS, <|user|>, "\n" after a special token, the image run, a BOS again after the image, ..., <|assistant|>.
    newline = tok("\n", add_special_tokens=False).input_ids
    assert ids[: 2 + len(newline)] == [1, user, *newline]
    start = 2 + len(newline)
    assert ids[start : start + n] == [32044] * n and ids[start + n] == 1
    assert ids[-1] == assistant
    assert (
        tok.decode([i for i in ids if i != 32044], skip_special_tokens=True).strip() == "What is shown in this image?"
    )


@pytest.mark.parametrize(
    ("text", "num_images", "message"),
    [
        ("<|image_2|> hi", 1, "found <|image_2|>, expected <|image_1|>"),
        ("<|image_1|> <|image_2|> hi", 1, "found <|image_1|>, <|image_2|>, expected <|image_1|>"),
        ("<|image_1|> hi", 2, "expected <|image_1|>, <|image_2|>"),
        ("<|image_2|> <|image_1|> hi", 2, "found <|image_2|>, <|image_1|>"),
        ("<|image_1|> <|image_1|> hi", 2, "found <|image_1|>, <|image_1|>"),
        ("hi", 1, "found no image tags"),
    ],
)
def test_bad_placeholders_raise(tiny_dir, text, num_images, message):
    processor = AutoProcessor.from_pretrained(tiny_dir)
    with pytest.raises(ValueError, match=message.replace("|", r"\|")):
        processor(text, [photo(50, 40, seed=i) for i in range(num_images)])


def test_batch_equals_single_samples_padded(tiny_dir):
    processor = AutoProcessor.from_pretrained(tiny_dir)
    texts = [PROMPT, "<|user|>\n<|image_1|>\n<|image_2|>\nCompare the images.<|end|>\n<|assistant|>\n", "<|user|>\nhi"]
    images = [[photo(1000, 750)], [photo(300, 900, seed=1), photo(5, 5, seed=2)], []]
    for side in ["right", "left"]:
        batch = processor(texts, images, padding_side=side, return_tensors="pt")
        singles = [processor(t, imgs, return_tensors="pt") for t, imgs in zip(texts, images)]
        longest = max(s["input_ids"].shape[1] for s in singles)
        assert batch["input_ids"].shape == (3, longest)
        for row, single in enumerate(singles):
            n = single["input_ids"].shape[1]
            span = slice(0, n) if side == "right" else slice(longest - n, longest)
            assert batch["input_ids"][row, span].tolist() == single["input_ids"][0].tolist()
            assert batch["attention_mask"][row].sum() == n
            assert batch["attention_mask"][row, span].all()
            pad = torch.ones(longest, dtype=torch.bool)
            pad[span] = False
            assert (batch["input_ids"][row, pad] == 32000).all()
        torch.testing.assert_close(
            batch["pixel_values"], torch.cat([singles[0]["pixel_values"], singles[1]["pixel_values"]])
        )
        assert batch["image_sizes"].tolist() == singles[0]["image_sizes"].tolist() + singles[1]["image_sizes"].tolist()


def test_processor_save_and_reload(tiny_dir, tmp_path):
    processor = AutoProcessor.from_pretrained(tiny_dir, num_crops=2)
    processor.save_pretrained(tmp_path)
    again = AutoProcessor.from_pretrained(tmp_path)
    assert again.image_processor.num_crops == 2
    out1, out2 = processor(PROMPT, [photo(640, 480)]), again(PROMPT, [photo(640, 480)])
    assert out1["input_ids"] == out2["input_ids"]
