import csv
import traceback

import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, AutoProcessor

from phi3v_recipe.collator import IGNORE_INDEX, VisionSFTCollator, encode_conversation
from phi3v_recipe.conversation import conversation, render
from phi3v_recipe.errors import UserError

from .conftest import HUB_MODELS
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


def encode_example(processor, question, answer, images):
    """(ids, labels) of a single-turn example."""
    encoded = encode_conversation(processor, conversation(question, len(images), answer), images)
    return encoded["input_ids"], encoded["labels"]


def make_row(images, question, answer):
    return {"images": images, "messages": conversation(question, len(images), answer)}


def test_prompt_uses_the_chat_template(processor):
    prompt = render(processor, conversation("What is shown in this image?", 2), add_generation_prompt=True)
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
    assert sum(1 for i in ids if i == 32044) == processor.num_image_tokens(640, 480)


@pytest.mark.parametrize("name", HUB_MODELS)
def test_real_tokenizer_ids_are_the_official_recipes(shared, name):
    """The official fine-tuning encodes the prompt with the processor and `{answer}<|end|>\\n<|endoftext|>` apart;
    the conversation through the chat template gives the same ids, and trains the answer's (32007, 29871, 13, 32000
    close it)."""
    processor = AutoProcessor.from_pretrained(shared / "hub" / name, num_crops=4)
    question, answer, images = "What is shown in this image?", "The answer", [photo(64, 48)]
    ids, labels = encode_example(processor, question, answer, images)
    prompt = f"<|user|>\n<|image_1|>\n{question}<|end|>\n<|assistant|>\n"
    official_prompt = processor(prompt, images)["input_ids"][0]
    official_answer = processor.tokenizer(f"{answer}<|end|>\n<|endoftext|>", add_special_tokens=False).input_ids
    assert ids == official_prompt + official_answer
    assert labels == [IGNORE_INDEX] * len(official_prompt) + official_answer
    assert official_answer == [450, 1234, 32007, 29871, 13, 32000]


def test_batch_mixes_crop_and_image_counts(processor, image_files):
    examples = [
        ([image_files["landscape"]], "What is shown in this image?", "A"),
        ([image_files["portrait"], image_files["tiny"]], "Compare.", "Two things"),
        ([image_files["wide"]], "And this?", "A long answer with more words"),
    ]
    batch = VisionSFTCollator(processor)([make_row(*example) for example in examples])
    singles = [
        encode_example(processor, question, answer, [Image.open(p).convert("RGB") for p in paths])
        for paths, question, answer in examples
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
    assert isinstance(batch["image_sizes"], list)  # host data: the model never reads it back from the GPU
    grids = [(h // 336) * (w // 336) for h, w in batch["image_sizes"]]
    assert len(grids) == 4 and len(set(grids)) > 1  # different crop counts in one batch


def test_padding_to_a_multiple(processor, image_files):
    batch = VisionSFTCollator(processor, pad_to_multiple_of=64)([make_row([image_files["landscape"]], "Q", "A")])
    assert batch["input_ids"].shape[1] % 64 == 0
    ids, _ = encode_example(processor, "Q", "A", [Image.open(image_files["landscape"]).convert("RGB")])
    assert batch["attention_mask"].sum() == len(ids)
    assert batch["input_ids"].shape[1] - len(ids) < 64


def test_batch_feeds_the_model(tiny_dir, processor, image_files):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    rows = [
        make_row([image_files["landscape"]], "Q", "A"),
        make_row([image_files["portrait"], image_files["tiny"]], "Q2", "B C"),
    ]
    batch = VisionSFTCollator(processor)(rows)
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss > 0


# Operations that read a tensor's values on the host: on a GPU each one waits until the device has caught up.
HOST_READS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default"}


class HostReads(TorchDispatchMode):
    """Records every host read of tensor data with the innermost frame of the code that asked for it."""

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in HOST_READS:
            frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename]  # not this frame
            self.reads.append((str(func), f"{frames[-1].filename}:{frames[-1].lineno}"))
        return func(*args, **(kwargs or {}))


def test_a_training_step_of_the_model_never_waits_on_the_device_in_our_code(
    tiny_dir, processor, image_files, monkeypatch
):
    """A training forward and backward on a collated batch, with the model taking the path it takes on a GPU: no value
    of a tensor is read back on the host by our code (the crop grids come as host data from the collator, the image
    count check runs on the device). transformers' own SDPA mask still reads the padding mask (listed, not ours)."""
    from phi3v_recipe.phi3_v import modeling_phi3_v

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="sdpa").train()
    rows = [make_row([image_files["landscape"]], "Q", "A"), make_row([image_files["portrait"]], "Question?", "B")]
    batch = VisionSFTCollator(processor)(rows)
    monkeypatch.setattr(modeling_phi3_v, "reads_back", lambda device: False)  # as on a GPU
    with HostReads() as probe:
        model(**batch).loss.backward()
    ours = [read for read in probe.reads if "/phi3v_recipe/" in read[1]]
    assert ours == [], ours
    assert all("masking_utils" in where for _, where in probe.reads), probe.reads
    # The same check on the device still catches ids and pixels that do not match.
    batch["input_ids"][0, batch["input_ids"][0] == 32044] = 1  # no image positions left in row 0
    with pytest.raises(RuntimeError, match="image positions"):
        model(**batch)


def test_a_row_whose_image_does_not_decode_at_training_time_is_skipped_and_counted(
    processor, image_files, tmp_path, capsys
):
    """The data checks read image headers; a file that passes them (or changes later) and then fails to decode costs
    its row, said and listed in skipped_rows.csv, not the run."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg after all \xff\xd9")
    skipped = tmp_path / "skipped_rows.csv"
    skipped.write_text("row,id,reason\n")
    collate = VisionSFTCollator(processor, skipped_file=str(skipped))
    good = make_row([image_files["landscape"]], "Q", "A")
    batch = collate([make_row([str(broken)], "Q", "B"), good])
    alone = VisionSFTCollator(processor)([good])
    for key in ("input_ids", "labels", "attention_mask", "pixel_values"):
        assert torch.equal(batch[key], alone[key]), key
    assert batch["image_sizes"] == alone["image_sizes"]
    assert f"Skipped a row while training: {broken}: unreadable image (at decode)" in capsys.readouterr().err
    listed = list(csv.reader(skipped.open()))
    assert len(listed) == 2 and listed[1][1] == str(broken) and "unreadable image (at decode)" in listed[1][2]
    with pytest.raises(UserError, match="No row of a batch has images that decode"):
        collate([make_row([str(broken)], "Q", "B")])


def damaged_files(folder) -> dict:
    """Files that Pillow decodes without an error, but not as their headers promise."""
    import io
    import struct
    import zlib

    photo(120, 80).save(folder / "good.jpg", quality=90)
    jpeg = (folder / "good.jpg").read_bytes()
    middle = len(jpeg) // 2
    (folder / "cut.jpg").write_bytes(jpeg[:middle] + b"\xff\xd9")  # cut, its end marker put back
    (folder / "junk.jpg").write_bytes(jpeg[:middle] + b"\xff\xe1\x00\x10" + b"x" * 14 + jpeg[middle + 18 :])
    buffer = io.BytesIO()
    photo(120, 80).save(buffer, "PNG")
    png, pos, out = buffer.getvalue(), 8, buffer.getvalue()[:8]
    while pos < len(png):  # every chunk rewritten with a valid CRC: the image data, complete but half as long
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        data = png[pos + 8 : pos + 8 + length]
        if kind == b"IDAT":
            data = zlib.compress(zlib.decompress(data)[: len(zlib.decompress(data)) // 2])
        out += struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        pos += 12 + length
    (folder / "short.png").write_bytes(out)
    return {name: str(folder / name) for name in ("cut.jpg", "junk.jpg", "short.png")}


def test_images_that_decode_wrong_without_an_error_are_skipped_and_counted(processor, image_files, tmp_path):
    """Pillow fills a short PNG's missing rows with black and a damaged JPEG's missing blocks with grey, silently;
    such rows were trained on. Black rows at the bottom of a whole PNG, and the header checks, are not affected."""
    from phi3v_recipe.data.checks import check_image

    damaged = damaged_files(tmp_path)
    for path in damaged.values():
        assert Image.open(path).load() is not None and check_image(path, 10**8)  # no error from Pillow or the checks
    letterbox = tmp_path / "letterbox.png"
    black_bottom = photo(120, 80)
    black_bottom.paste((0, 0, 0), (0, 60, 120, 80))
    black_bottom.save(letterbox)
    skipped = tmp_path / "skipped_rows.csv"
    skipped.write_text("row,id,reason\n")
    collate = VisionSFTCollator(processor, skipped_file=str(skipped))
    batch = collate([make_row([path], "Q", "A") for path in [*damaged.values(), str(letterbox)]])
    assert len(batch["input_ids"]) == 1
    reasons = {row[1]: row[2] for row in list(csv.reader(skipped.open()))[1:]}
    assert set(reasons) == set(damaged.values())
    assert "DecodedWrong: its image data inflates to" in reasons[damaged["short.png"]]
    assert "decode as flat grey (128)" in reasons[damaged["cut.jpg"]] and "flat grey" in reasons[damaged["junk.jpg"]]
