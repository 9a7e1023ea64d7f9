import csv
import hashlib
import json
from pathlib import Path

import datasets
import pytest
from PIL import Image
from transformers import AutoProcessor

import phi3v_recipe.data as data_module
from phi3v_recipe.arguments import RecipeArguments
from phi3v_recipe.conversation import text_of
from phi3v_recipe.data import BadRow, DataArguments, format_number, prepare_data
from phi3v_recipe.errors import UserError
from phi3v_recipe.synthetic import write_sample_set

from .test_processor import photo


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return AutoProcessor.from_pretrained(tiny_dir)


def write_csv(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def product(code, image, title="Small Black Leather Tote", category="BAGS", price="1290.0"):
    return {
        "product_code": code,
        "title": title,
        "category3_code": category,
        "full_price": price,
        "local_image_path": image,
    }


@pytest.fixture()
def bad_input_csv(tmp_path):
    """One good row and one row of every kind of bad input."""
    (tmp_path / "img").mkdir()
    photo(64, 48).save(tmp_path / "img" / "good.png")
    photo(64, 48).save(tmp_path / "img" / "truncated.png")
    data = (tmp_path / "img" / "truncated.png").read_bytes()
    (tmp_path / "img" / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "img" / "empty.png").write_bytes(b"")
    (tmp_path / "img" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    Image.new("1", (3000, 3000)).save(tmp_path / "img" / "bomb.png")  # 9 Mpx in a few kB
    rows = [
        product("GOOD", "img/good.png"),
        product("MISSING", "img/nope.png"),
        product("EMPTY", "img/empty.png"),
        product("CORRUPT", "img/corrupt.jpg"),
        product("TRUNC", "img/truncated.png"),
        product("BOMB", "img/bomb.png"),
        product("PRICE", "img/good.png", price="call us"),
        product("TITLE", "img/good.png", title="  "),
        product("TAGS", "img/good.png", title="Tote <|image_2|>"),
        product("NOIMG", ""),
    ]
    return write_csv(tmp_path / "products.csv", rows)


EXPECTED_REASONS = {
    "MISSING": "missing image file",
    "EMPTY": "empty (0-byte) image file",
    "CORRUPT": "unreadable image",
    "TRUNC": "unreadable image",
    "BOMB": "image over max_image_pixels",
    "PRICE": "non-numeric full_price",
    "TITLE": "empty title",
    "TAGS": "malformed placeholders",
    "NOIMG": "no image",
}


def test_bad_rows_are_skipped_counted_and_listed(processor, bad_input_csv, tmp_path):
    args = DataArguments(dataset=str(bad_input_csv), eval_fraction=0, max_image_pixels=4_000_000)
    data = prepare_data(args, processor, max_length=4096)

    assert data.train["product_code"] == ["GOOD"]
    assert {key: err.kind for _, key, err in data.skipped} == EXPECTED_REASONS
    summary = data.summary()
    assert summary.startswith("1 rows kept (1 train, 0 eval); 9 skipped: ")
    assert "2 unreadable image" in summary
    listing = list(csv.reader(data.write_skipped(tmp_path / "skipped.csv").open()))
    assert listing[0] == ["row", "id", "reason"] and len(listing) == 10
    assert listing[1][1] == "MISSING" and "img/nope.png" in listing[1][2]


@pytest.mark.parametrize("code", sorted(EXPECTED_REASONS))
def test_strict_mode_names_the_row(processor, bad_input_csv, tmp_path, code):
    rows = list(csv.DictReader(bad_input_csv.open()))
    only = write_csv(tmp_path / "one.csv", [r for r in rows if r["product_code"] in ("GOOD", code)])
    args = DataArguments(dataset=str(only), strict=True, max_image_pixels=4_000_000)
    with pytest.raises(
        BadRow, match=rf"Row 1 \(product_code={code}\): {EXPECTED_REASONS[code].replace('(', '.').replace(')', '.')}"
    ):
        prepare_data(args, processor, max_length=4096)


def test_every_control_token_in_an_answer_or_a_question_is_a_counted_skip(processor, tmp_path):
    """Each special and added token of the tokenizer in use, planted in a title (the answer) or in a row's question,
    is refused with the reason; nothing of it reaches the training text."""
    from phi3v_recipe.data.checks import control_tokens

    tokens = control_tokens(processor.tokenizer)
    assert {"<|end|>", "<|endoftext|>", "<s>", "</s>", "<|assistant|>", "<|user|>", "<|system|>"} <= set(tokens)
    photo(64, 48).save(tmp_path / "a.png")
    rows = [{**product("GOOD", "a.png"), "question": "What is it?"}]
    rows += [
        {**product(f"T{i}", "a.png", title=f"Tote {t} bag"), "question": "What is it?"} for i, t in enumerate(tokens)
    ]
    rows += [{**product(f"Q{i}", "a.png"), "question": f"What{t} is it?"} for i, t in enumerate(tokens)]
    path = write_csv(tmp_path / "planted.csv", rows)
    args = DataArguments(dataset=str(path), eval_fraction=0, question_column="question")
    data = prepare_data(args, processor, max_length=4096)
    assert data.train["product_code"] == ["GOOD"]
    reasons = {key: err for _, key, err in data.skipped}
    assert len(reasons) == 2 * len(tokens) and {err.kind for err in reasons.values()} == {"control token in text"}
    assert repr(tokens[0]) in str(reasons["T0"]) and "(assistant)" in str(reasons["T0"])
    assert "(user)" in str(reasons["Q0"])


def test_rows_longer_than_max_length_are_dropped_not_cut(processor, tmp_path):
    photo(64, 48).save(tmp_path / "a.png")
    rows = [product("SHORT", "a.png"), product("LONG", "a.png", title="Tote " * 200)]
    path = write_csv(tmp_path / "p.csv", rows)
    data = prepare_data(DataArguments(dataset=str(path), eval_fraction=0), processor, max_length=900)
    assert data.train["product_code"] == ["SHORT"]
    assert data.train["length"][0] <= 900
    [(_, key, err)] = data.skipped
    assert key == "LONG" and err.kind == "longer than max_length"


def test_jsonl_with_several_images_and_a_question_column(processor, tmp_path):
    photo(64, 48).save(tmp_path / "a.png")
    photo(48, 64, seed=1).save(tmp_path / "b.png")
    rows = [
        {"id": 1, "pics": ["a.png", "b.png"], "question": "Which is taller?", "label": "the second"},
        {"id": 2, "pics": ["b.png"], "label": "portrait"},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = DataArguments(
        dataset=str(path),
        image_column="pics",
        id_column="id",
        answer_template="It is {label}",
        numeric_fields=[],
        eval_fraction=0,
    )
    data = prepare_data(args, processor, max_length=4096)
    assert data.train["images"] == [[str(tmp_path / "a.png"), str(tmp_path / "b.png")], [str(tmp_path / "b.png")]]
    assert [text_of(m[0]) for m in data.train["messages"]] == ["Which is taller?", "What is shown in this image?"]
    assert [a[0] for a in data.train["answers"]] == ["It is the second", "It is portrait"]
    assert data.train["length"][0] > data.train["length"][1] + 300  # two images vs one


def test_dataset_with_an_embedded_image_column(processor, tmp_path):
    """The shape of a Hub dataset with an `Image` column (here read from a local Parquet file)."""
    for i in range(3):
        photo(64 + i, 48, seed=i).save(tmp_path / f"{i}.png")
    images = [{"bytes": (tmp_path / f"{i}.png").read_bytes(), "path": f"{i}.png"} for i in range(3)]
    table = datasets.Dataset.from_dict({"image": images, "caption": ["red", "green", "blue"]})
    table.cast_column("image", datasets.Image()).to_parquet(tmp_path / "hub.parquet")
    for i in range(3):
        (tmp_path / f"{i}.png").unlink()  # only the embedded bytes remain
    args = DataArguments(
        dataset=str(tmp_path / "hub.parquet"),
        image_column="image",
        answer_template="{caption}",
        numeric_fields=[],
        eval_fraction=0,
        image_cache_dir=str(tmp_path / "cache"),
    )
    data = prepare_data(args, processor, max_length=4096)
    assert [a[0] for a in data.train["answers"]] == ["red", "green", "blue"] and not data.skipped
    first = Image.open(data.train["images"][0][0])
    assert first.size == (64, 48)


def test_image_folder_with_metadata(processor, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(4):
        photo(60, 40, seed=i).save(folder / f"{i}.png")
    write_csv(folder / "metadata.csv", [{"file_name": f"{i}.png", "title": f"item {i}"} for i in range(4)])
    args = DataArguments(
        dataset=str(folder),
        image_column="image",
        answer_template="{title}",
        numeric_fields=[],
        eval_fraction=0.5,
        id_column="title",
        image_cache_dir=str(tmp_path / "cache"),
    )
    data = prepare_data(args, processor, max_length=4096)
    assert len(data.train) == len(data.eval) == 2
    assert sorted(a[0] for a in [*data.train["answers"], *data.eval["answers"]]) == [f"item {i}" for i in range(4)]


def test_split_is_deterministic_and_seeded(processor, tmp_path):
    csv_path = write_sample_set(tmp_path / "s", rows=40, seed=3)
    split = [
        prepare_data(DataArguments(dataset=str(csv_path), eval_fraction=0.25, split_seed=seed), processor, 4096)
        for seed in (1, 1, 2)
    ]
    assert split[0].eval["product_code"] == split[1].eval["product_code"]
    assert split[0].eval["product_code"] != split[2].eval["product_code"]
    assert len(split[0].eval) == 10 and len(split[0].train) == 30


def test_synthetic_set_is_deterministic(tmp_path):
    def digest(folder):
        files = sorted(folder.rglob("*.*"))
        return {f.relative_to(folder).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}

    a = write_sample_set(tmp_path / "a", rows=30, seed=7).parent
    b = write_sample_set(tmp_path / "b", rows=30, seed=7).parent
    c = write_sample_set(tmp_path / "c", rows=30, seed=8).parent
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)
    rows = list(csv.DictReader((a / "burberry.csv").open()))
    assert {"product_code", "title", "category3_code", "full_price", "imageurl", "local_image_path"} <= set(rows[0])
    assert all(float(r["full_price"]) > 0 and r["title"] for r in rows)


def test_synthetic_answers_follow_the_picture():
    """Same attributes -> same title, category and price: the label is a function of what is drawn."""
    from phi3v_recipe.synthetic import Product

    cheap = Product("BAGS", 0, "Canvas", "Black", "Small")
    dear = Product("BAGS", 0, "Cashmere", "Black", "Large")
    assert cheap.title == "Small Black Canvas Tote"
    assert cheap.price < dear.price
    assert Product("BAGS", 0, "Canvas", "Black", "Small").price == cheap.price


@pytest.mark.parametrize(("raw", "text"), [("1290.0", "1290"), ("$1,290.00", "1290"), (490, "490"), ("12.50", "12.5")])
def test_format_number(raw, text):
    assert format_number(raw) == text


@pytest.mark.parametrize("raw", ["", "n/a", "nan", "12,3.4.5"])
def test_format_number_rejects(raw):
    with pytest.raises(ValueError):
        format_number(raw)


def test_missing_local_dataset_says_how_to_get_it(processor):
    with pytest.raises(UserError, match="make sample-data"):
        prepare_data(DataArguments(dataset="data/nowhere/burberry.csv"), processor, 4096)


def test_data_arguments_validate():
    with pytest.raises(ValueError, match="numeric_fields"):
        DataArguments(answer_template="{title}")
    with pytest.raises(ValueError, match="eval_fraction"):
        DataArguments(eval_fraction=1.5)


class CountedChecks:
    """Counts the rows the row check sees in this process (under `monkeypatch`)."""

    def __init__(self, monkeypatch):
        self.rows = 0
        check = data_module.RowCheck.__call__

        def counted(row_check, batch):
            self.rows += len(next(iter(batch.values())))
            return check(row_check, batch)

        monkeypatch.setattr(data_module.RowCheck, "__call__", counted)

    def take(self) -> int:
        rows, self.rows = self.rows, 0
        return rows


def test_prepared_rows_are_read_back_and_prepared_again_only_when_something_changes(
    processor, tiny_dir, tmp_path, monkeypatch
):
    csv_path = write_sample_set(tmp_path / "s", rows=12, seed=0)
    checks = CountedChecks(monkeypatch)
    base = dict(dataset=str(csv_path), eval_fraction=0.25, prepared_dir=str(tmp_path / "prepared"))

    def prepare(processor=processor, max_length=4096, **changes):
        data = prepare_data(DataArguments(**(base | changes)), processor, max_length)
        return data, checks.take()

    first, checked = prepare()
    assert checked == 12
    again, checked = prepare()
    assert checked == 0  # read back, not checked again
    assert again.train.to_list() == first.train.to_list() and again.eval.to_list() == first.eval.to_list()
    assert again.train.cache_files  # memory-mapped from the kept entry, not held in memory
    # Splitting differently, or reporting bad rows differently, reuses the same checked rows.
    assert prepare(eval_fraction=0.5, split_seed=7, strict=True)[1] == 0
    # So do a recipe's run keys, which shape no row: `phi3v-recipe prepare` serves the run it prepared for.
    run_keys = dict(overwrite_output_dir=True, predictions_to_log=0, freeze_vision_tower=False)
    prepare_data(RecipeArguments(**base, **run_keys), processor, 4096)
    assert checks.take() == 0

    # What changes the rows prepares them again: a recipe key that shapes them, max_length, the processor ...
    question, checked = prepare(question="What is this?")
    assert checked == 12 and question.train["messages"][0][0]["content"][-1]["text"] == "What is this?"
    assert prepare(max_length=4000)[1] == 12
    other = AutoProcessor.from_pretrained(tiny_dir, num_crops=1)
    fewer_crops, checked = prepare(processor=other)
    assert checked == 12 and sum(fewer_crops.train["length"]) < sum(first.train["length"])
    # ... an edited data file ...
    rows = list(csv.DictReader(csv_path.open()))
    rows[0]["title"] = "Large Beige Leather Tote"
    write_csv(csv_path, rows)
    edited, checked = prepare()
    assert checked == 12
    edited_answers = [a[0] for a in [*edited.train["answers"], *edited.eval["answers"]]]
    assert any("Large Beige Leather Tote" in answer for answer in edited_answers)
    assert prepare()[1] == 0
    # ... an image file replaced by one of another size (the token counts change) ...
    image = csv_path.parent / rows[0]["local_image_path"]
    photo(900, 300).save(image)
    resized, checked = prepare()
    assert checked == 12
    resized_rows = {r["product_code"]: r["length"] for r in [*resized.train.to_list(), *resized.eval.to_list()]}
    edited_rows = {r["product_code"]: r["length"] for r in [*edited.train.to_list(), *edited.eval.to_list()]}
    assert resized_rows[rows[0]["product_code"]] != edited_rows[rows[0]["product_code"]]
    # ... and a missing image that appears later.
    image.unlink()
    assert prepare()[0].skipped[0][2].kind == "missing image file"
    photo(64, 48).save(image)
    assert prepare()[0].skipped == []

    # Entries whose images changed were deleted; no staging or stale folder is left behind.
    assert not [entry.name for entry in (tmp_path / "prepared").iterdir() if entry.name.startswith(".")]

    # Another dataset never reads this one's rows, even with the same file name and row count.
    other_csv = write_sample_set(tmp_path / "t", rows=12, seed=1)
    other_data, checked = prepare(dataset=str(other_csv))
    assert checked == 12
    assert (
        set(other_data.train["product_code"]) != set(first.train["product_code"])
        or other_data.train["images"] != first.train["images"]
    )


def damage(entry: Path, how: str) -> None:
    if how == "cut arrow":
        arrow = next(entry.glob("*.arrow"))
        arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    elif how == "cut skipped.json":
        meta = entry / "skipped.json"
        meta.write_text(meta.read_text()[:10])
    else:
        (entry / "state.json").unlink()


@pytest.mark.parametrize("how", ["cut arrow", "cut skipped.json", "no state.json"])
def test_a_damaged_prepared_entry_is_said_discarded_and_prepared_again(processor, tmp_path, monkeypatch, capsys, how):
    csv_path = write_sample_set(tmp_path / "s", rows=12, seed=0)
    checks = CountedChecks(monkeypatch)
    args = DataArguments(dataset=str(csv_path), eval_fraction=0, prepared_dir=str(tmp_path / "prepared"))
    first = prepare_data(args, processor, 4096).train.to_list()  # read before the file under its memory map is cut
    [entry] = (tmp_path / "prepared").iterdir()
    damage(entry, how)
    checks.take()
    capsys.readouterr()
    again = prepare_data(args, processor, 4096)
    assert f"The prepared rows in {entry} are damaged" in capsys.readouterr().out
    assert checks.take() == 12 and again.train.to_list() == first
    assert [e.name for e in (tmp_path / "prepared").iterdir()] == [entry.name]  # rebuilt in place, nothing aside
    assert prepare_data(args, processor, 4096).train.to_list() == first and checks.take() == 0


def test_a_prepared_dir_that_cannot_take_files_is_one_line(processor, tmp_path, monkeypatch):
    import errno

    csv_path = write_sample_set(tmp_path / "s", rows=4, seed=0)
    (tmp_path / "a-file").write_text("")
    args = DataArguments(dataset=str(csv_path), eval_fraction=0, prepared_dir=str(tmp_path / "a-file"))
    with pytest.raises(UserError, match=r"Cannot write the prepared rows to .*a-file \(.*\): set prepared_dir"):
        prepare_data(args, processor, 4096)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data_module.prepared, "save", full)
    args = DataArguments(dataset=str(csv_path), eval_fraction=0, prepared_dir=str(tmp_path / "full"))
    with pytest.raises(UserError, match=r"Cannot write the prepared rows to .*full \(No space left on device\)"):
        prepare_data(args, processor, 4096)


def test_rows_checked_in_several_processes_are_the_rows_checked_in_one(processor, tmp_path, monkeypatch):
    csv_path = write_sample_set(tmp_path / "s", rows=30, seed=0)
    (csv_path.parent / "images" / Path(list(csv.DictReader(csv_path.open()))[3]["local_image_path"]).name).unlink()
    monkeypatch.setattr(data_module, "PARALLEL_FROM", 10)
    results = [
        prepare_data(
            DataArguments(dataset=str(csv_path), eval_fraction=0, prepared_dir=str(tmp_path / f"p{workers}")),
            processor,
            4096,
            num_proc=workers,
        )
        for workers in (1, 3)
    ]
    assert results[0].train.to_list() == results[1].train.to_list() and len(results[0].train) == 29
    assert [(i, key, err.kind) for i, key, err in results[1].skipped] == [(3, "SYN000000003", "missing image file")]


def test_images_are_checked_without_decoding_yet_truncated_and_corrupt_files_are_counted_skips(processor, tmp_path):
    """A PNG is verified chunk by chunk; a JPEG must end with its end-of-image marker, or it is decoded in full."""
    folder = tmp_path / "img"
    folder.mkdir()
    photo(320, 240).save(folder / "good.jpg", quality=90)
    jpeg = (folder / "good.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])  # header intact, the scan cut short
    (folder / "trailing.jpg").write_bytes(jpeg + b"camera maker's notes")  # decodes fine: kept
    photo(320, 240).save(folder / "good.png")
    png = bytearray((folder / "good.png").read_bytes())
    png[len(png) // 2] ^= 0xFF  # one flipped byte inside the image data: its chunk's CRC fails
    (folder / "flipped.png").write_bytes(bytes(png))
    names = ["good.jpg", "cut.jpg", "trailing.jpg", "good.png", "flipped.png"]
    csv_path = write_csv(tmp_path / "p.csv", [product(name, f"img/{name}") for name in names])
    data = prepare_data(
        DataArguments(dataset=str(csv_path), eval_fraction=0, prepared_dir=str(tmp_path / "p")), processor, 4096
    )
    assert data.train["product_code"] == ["good.jpg", "trailing.jpg", "good.png"]
    assert {key: err.kind for _, key, err in data.skipped} == {
        "cut.jpg": "unreadable image",
        "flipped.png": "unreadable image",
    }
