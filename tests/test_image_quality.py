"""Training data that used to go silently wrong: 16-bit images clipped to white, phone photos trained sideways, an
end-of-text trained after a question, a role token trained as an answer, and a full disk taken for bad rows."""

import errno
import io

import datasets
import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor

from phi3v_recipe import download
from phi3v_recipe.collator import IGNORE_INDEX, encode_conversation, open_images
from phi3v_recipe.conversation import assistant_turn, user_turn
from phi3v_recipe.data import DataArguments, check_image, sources
from phi3v_recipe.errors import UserError
from phi3v_recipe.predict import open_images_or_fail

from .test_processor import photo


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return AutoProcessor.from_pretrained(tiny_dir)


def test_a_16_bit_image_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")  # PIL reads it as a 16-bit (or 32-bit integer) image
    for image in [open_images([str(path)])[0], open_images_or_fail([(str(path), "--image")])[0]]:
        pixels = np.asarray(image)
        assert image.mode == "RGB" and pixels.min() == 0 and pixels.max() == 255
        assert abs(pixels.mean() - 127.5) < 2  # a ramp stays a ramp (clipping made 99% of it white)


@pytest.fixture()
def phone_photo(tmp_path):
    """A JPEG stored sideways (60x40) with EXIF orientation 6: shown upright it is 40 wide and 60 tall."""
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    photo(60, 40).save(path, exif=exif)
    return path


def test_exif_orientation_is_applied_everywhere(phone_photo, processor):
    trained = open_images([str(phone_photo)])[0]
    predicted = open_images_or_fail([(str(phone_photo), "--image")])[0]
    by_transformers = processor.image_processor.fetch_images(str(phone_photo))  # the processor's own path loader
    assert trained.size == predicted.size == by_transformers.size == (40, 60)
    assert np.array_equal(np.asarray(trained), np.asarray(by_transformers.convert("RGB")))
    assert check_image(str(phone_photo), 10**8) == (40, 60)  # the length estimate sees it upright too


def test_no_end_of_text_is_trained_after_a_final_user_turn(processor):
    messages = [user_turn("Colour?", 0), assistant_turn("Red"), user_turn("And the shape?", 0)]
    labels = encode_conversation(processor, messages, [])["labels"]
    assert labels[-1] == IGNORE_INDEX
    ends_with_answer = encode_conversation(processor, messages[:2], [])["labels"]
    assert ends_with_answer[-1] == processor.tokenizer.eos_token_id


def test_an_answer_starting_with_a_space_never_trains_the_role_token(processor):
    tokenizer = processor.tokenizer
    for answer in ["  Red bag", "\nRed bag", "Red bag"]:
        labels = encode_conversation(processor, [user_turn("Colour?", 0), assistant_turn(answer)], [])["labels"]
        trained = tokenizer.convert_ids_to_tokens([t for t in labels if t != IGNORE_INDEX])
        print(repr(answer), "trained:", trained)
        assert "<|assistant|>" not in trained and "<|user|>" not in trained
        assert tokenizer.decode([t for t in labels if t != IGNORE_INDEX]).strip().startswith("Red bag")


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "/cache/abc.png")


def test_a_full_disk_while_caching_embedded_images_stops_the_run(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    photo(20, 10).save(buffer, format="PNG")
    table = datasets.Dataset.from_dict({"image": [{"bytes": buffer.getvalue(), "path": "a.png"}] * 3}).cast_column(
        "image", datasets.Image()
    )
    monkeypatch.setattr(sources, "write_atomically", no_space)
    args = DataArguments(image_cache_dir=str(tmp_path / "cache"))
    with pytest.raises(
        UserError, match=r"No space left on the disk of .*cache while caching images \(/cache/abc.png\)"
    ):
        sources.image_refs(table, args, "image", tmp_path, False)


def test_a_full_disk_while_fetching_images_stops_the_run(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    photo(20, 10).save(buffer, format="PNG")
    monkeypatch.setattr(download, "_download", lambda client, url, settings: buffer.getvalue())
    monkeypatch.setattr(download, "write_atomically", no_space)
    table = datasets.Dataset.from_dict({"imageurl": [f"http://127.0.0.1:9/{i}.png" for i in range(4)]})
    args = DataArguments(image_url_column="imageurl", image_cache_dir=str(tmp_path / "cache"))
    with pytest.raises(UserError, match="No space left on the disk of"):
        sources.image_refs(table, args, None, tmp_path, False)
