"""Any image-text dataset: each row format becomes a conversation that trains exactly its assistant turns; formats are
detected (or refused with the columns named); every bad-row check holds per turn; the task metrics; videos."""

import csv
import json
import tarfile

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor

from phi3v_recipe.collator import IGNORE_INDEX, VisionSFTCollator
from phi3v_recipe.conversation import render
from phi3v_recipe.data import BadRow, DataArguments, prepare_data
from phi3v_recipe.data.sources import sample_evenly
from phi3v_recipe.evaluate import anls, score_answers

from .conftest import HUB_MODELS
from .test_processor import photo


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    for i, size in enumerate([(64, 48), (40, 90), (50, 50)]):
        photo(*size, seed=i).save(folder / f"p{i}.png")
    return folder


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return AutoProcessor.from_pretrained(tiny_dir, num_crops=1)


def typed(role, *items):
    return {"role": role, "content": [{"type": "image"} if i is None else {"type": "text", "text": i} for i in items]}


# Each format, two images and two assistant turns ("Red" then "A square"), as its source would write it.
FORMAT_ROWS = {
    "messages (typed)": {
        "messages": [
            typed("system", "Be brief."),
            typed("user", None, "Colour?"),
            typed("assistant", "Red"),
            typed("user", "And here", None, "what shape?"),
            typed("assistant", "A square"),
        ],
        "images": ["p0.png", "p1.png"],
    },
    "messages (string, tags)": {
        "messages": [
            {"role": "user", "content": "<|image_1|>\nColour?"},
            {"role": "assistant", "content": "Red"},
            {"role": "user", "content": "And here <|image_2|>\nwhat shape?"},
            {"role": "assistant", "content": "A square"},
        ],
        "images": ["p0.png", "p1.png"],
    },
    "messages (string, TRL: images first)": {
        "messages": [
            {"role": "user", "content": "Colour?"},
            {"role": "assistant", "content": "Red"},
            {"role": "user", "content": "And what shape?"},
            {"role": "assistant", "content": "A square"},
        ],
        "images": ["p0.png", "p1.png"],
    },
    "conversations (LLaVA)": {
        "conversations": [
            {"from": "human", "value": "<image>\nColour?"},
            {"from": "gpt", "value": "Red"},
            {"from": "human", "value": "And here <image>\nwhat shape?"},
            {"from": "gpt", "value": "A square"},
        ],
        "images": ["p0.png", "p1.png"],
    },
    "conversations (cookbook turns)": {
        "conversations": [
            {"images": ["p0.png"], "user": "Colour?", "assistant": "Red"},
            {"images": ["p1.png"], "user": "And what shape?", "assistant": "A square"},
        ]
    },
    "texts (the_cauldron)": {
        "texts": [{"user": "Colour?", "assistant": "Red"}, {"user": "And what shape?", "assistant": "A square"}],
        "images": ["p0.png", "p1.png"],
    },
}
EXPECTED_FORMAT = {
    "messages (typed)": "messages",
    "messages (string, tags)": "messages",
    "messages (string, TRL: images first)": "messages",
    "conversations (LLaVA)": "conversations",
    "conversations (cookbook turns)": "conversations",
    "texts (the_cauldron)": "texts",
}


def collated_format_row(processor, path, name):
    """The one row of a format's file, prepared (in the format ``name`` stands for) and collated: the row, its batch
    and the label ids it trains (printed as tokens)."""
    data = prepare_data(DataArguments(dataset=str(path), eval_fraction=0), processor, max_length=None)
    assert data.args.data_format == EXPECTED_FORMAT[name] and not data.skipped, data.summary()
    row = data.train[0]
    batch = VisionSFTCollator(processor)([row])
    labels = batch["labels"][0]
    trained = labels[labels != IGNORE_INDEX].tolist()
    print(name, "->", processor.tokenizer.convert_ids_to_tokens(trained))
    return row, batch, trained


@pytest.mark.parametrize("name", sorted(FORMAT_ROWS))
@pytest.mark.parametrize("model", HUB_MODELS)
def test_each_format_trains_exactly_its_assistant_turns(shared, pictures, name, model):
    processor = AutoProcessor.from_pretrained(shared / "hub" / model, num_crops=1)
    path = write_jsonl(pictures / f"{name.split()[0]}.jsonl", [FORMAT_ROWS[name]])
    row, batch, trained = collated_format_row(processor, path, name)
    assert len(row["images"]) == 2
    ids, labels, tok = batch["input_ids"][0], batch["labels"][0], processor.tokenizer
    expected = tok("Red<|end|>\n", add_special_tokens=False).input_ids
    expected += tok("A square<|end|>\n", add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert trained == expected  # both answers, each with <|end|> and its newline, and the closing <|endoftext|>
    assert (ids == 32044).sum() == processor.num_image_tokens(64, 48) + processor.num_image_tokens(40, 90)
    assert not (labels[ids == 32044] != IGNORE_INDEX).any()  # no image position
    assert len(ids) == row["length"]  # length grouping and max_length see the whole conversation
    if name == "messages (typed)":
        assert render(processor, row["messages"]).startswith("<|system|>\nBe brief.<|end|>\n<|user|>\n<|image_1|>")


def test_question_answer_columns_train_the_first_answer_and_keep_all(pictures, processor):
    path = write_jsonl(
        pictures / "vqa.jsonl",
        [{"id": 1, "image": "p0.png", "question": "What is the total?", "answers": ["$12", "12 dollars"]}],
    )
    data = prepare_data(DataArguments(dataset=str(path), eval_fraction=0, id_column="id"), processor, None)
    assert data.args.data_format == "qa" and data.args.scoring() == "exact_match"
    assert data.train[0]["answers"] == ["$12", "12 dollars"]
    assert render(processor, data.train[0]["messages"]).endswith(
        "What is the total?<|end|>\n<|assistant|>\n$12<|end|>\n"
    )


def test_an_unknown_shape_names_the_columns_and_the_formats(pictures, processor):
    path = write_jsonl(pictures / "odd.jsonl", [{"picture": "p0.png", "caption": "red"}])
    with pytest.raises(ValueError, match=r"columns \['picture', 'caption'\].*Accepted: 'messages'"):
        prepare_data(DataArguments(dataset=str(path)), processor, None)


def test_a_missing_column_is_one_error_up_front(pictures, processor):
    path = write_jsonl(pictures / "vqa2.jsonl", [{"image": "p0.png", "question": "q", "answers": ["a"]}])
    args = DataArguments(dataset=str(path), answer_column="answer_text")
    with pytest.raises(
        ValueError, match=r"no column 'answer_text'; its columns are \['image', 'question', 'answers'\]"
    ):
        prepare_data(args, processor, None)


BAD_TURNS = {
    "IMAGES": (
        [typed("user", None, None, "q"), typed("assistant", "a")],
        ["p0.png"],
        "image count does not match the markers",
    ),
    "EMPTY": (
        [typed("user", None, "q"), typed("assistant", "a"), typed("user", "q2"), typed("assistant", "  ")],
        ["p0.png"],
        "empty assistant turn",
    ),
    "TAG": (
        [typed("user", None, "q"), typed("assistant", "a"), typed("user", "see <|image_2|>"), typed("assistant", "b")],
        ["p0.png"],
        "malformed placeholders",
    ),
    "CONTROL": (
        [typed("user", None, "q"), typed("assistant", "done<|end|> and more")],
        ["p0.png"],
        "control token in text",
    ),
    "MISSING": ([typed("user", None, "q"), typed("assistant", "a")], ["nope.png"], "missing image file"),
    "NOANSWER": ([typed("user", None, "q")], ["p0.png"], "no assistant turn"),
    "LONG": ([typed("user", None, "q " * 400), typed("assistant", "a")], ["p0.png"], "longer than max_length"),
}


def test_bad_turns_are_skipped_counted_and_listed(pictures, processor, tmp_path):
    rows = [{"id": "GOOD", "messages": [typed("user", None, "q"), typed("assistant", "a")], "images": ["p0.png"]}]
    rows += [{"id": key, "messages": m, "images": images} for key, (m, images, _) in BAD_TURNS.items()]
    path = write_jsonl(pictures / "bad.jsonl", rows)
    data = prepare_data(DataArguments(dataset=str(path), id_column="id", eval_fraction=0), processor, max_length=700)
    assert data.train["id"] == ["GOOD"]
    assert {key: err.kind for _, key, err in data.skipped} == {k: v[2] for k, v in BAD_TURNS.items()}
    assert str(dict((k, e) for _, k, e in data.skipped)["EMPTY"]) == "empty assistant turn: turn 4"
    listing = list(csv.reader(data.write_skipped(tmp_path / "skipped.csv").open()))
    assert len(listing) == 1 + len(BAD_TURNS)
    assert f"{len(BAD_TURNS)} skipped" in data.summary()


def test_strict_names_the_bad_row_and_turn(pictures, processor):
    rows = [{"id": "X", "messages": BAD_TURNS["EMPTY"][0], "images": ["p0.png"]}]
    path = write_jsonl(pictures / "strict.jsonl", rows)
    with pytest.raises(BadRow, match=r"Row 0 \(id=X\): empty assistant turn: turn 4"):
        prepare_data(DataArguments(dataset=str(path), id_column="id", strict=True), processor, None)


def test_answers_outside_the_label_set_are_skipped(pictures, processor):
    rows = [{"image": "p0.png", "question": "q", "answers": [a]} for a in ("True", "false.", "maybe")]
    path = write_jsonl(pictures / "labels.jsonl", rows)
    args = DataArguments(dataset=str(path), metric="accuracy", labels=["True", "False"], eval_fraction=0)
    data = prepare_data(args, processor, None)
    assert len(data.train) == 2 and [err.kind for *_, err in data.skipped] == ["answer not in labels"]


@pytest.mark.parametrize(
    ("prediction", "references", "expected"),
    [
        ("Invoice", ["invoice"], 1.0),  # case is ignored
        ("  invoice ", ["Invoice"], 1.0),
        ("invoce", ["invoice"], 1 - 1 / 7),  # one deletion in seven characters
        ("recipt", ["receipt", "a receipt"], 1 - 1 / 7),  # the best reference counts
        ("memo", ["invoice"], 0.0),  # far: below the threshold
        ("abcd", ["abef"], 0.0),  # distance exactly 0.5 is not under the threshold
        ("abc", ["abd", "xyz"], 1 - 1 / 3),
        ("", ["a"], 0.0),
    ],
)
def test_anls_against_hand_computed_values(prediction, references, expected):
    assert anls(prediction, references) == pytest.approx(expected)


def test_accuracy_counts_unparseable_answers_as_misses():
    recipe = DataArguments(metric="accuracy", labels=["True", "False"])
    rows = [{"answers": ["True"]}, {"answers": ["False"]}, {"answers": ["True"]}, {"answers": ["False"]}]
    metrics = score_answers(recipe, ["true.", "True", "I think so", "False"], rows)
    assert metrics == {"parse_rate": 0.75, "accuracy": 0.5}


def test_exact_match_and_anls_over_several_references():
    rows = [{"answers": ["Paid", "PAID"]}, {"answers": ["Invoice", "an invoice"]}]
    assert score_answers(DataArguments(metric="exact_match"), ["paid.", "invoices"], rows) == {"exact_match": 0.5}
    scored = score_answers(DataArguments(metric="anls"), ["paid", "invoices"], rows)
    assert scored["anls"] == pytest.approx((1 + (1 - 1 / 8)) / 2) and scored["exact_match"] == 0.5


def test_frames_are_sampled_evenly():
    assert sample_evenly(list(range(16)), 8) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert sample_evenly(list(range(10)), 4) == [0, 2, 5, 7]
    assert sample_evenly([1, 2], 8) == [1, 2]


def write_video(path, frames=20, width=64, height=48):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            pixels = np.zeros((height, width, 3), np.uint8)
            pixels[:, (i * 3) % width : (i * 3) % width + 8] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def ucf_like_archive(root):
    """The layout of sayakpaul/ucf101-subset's UCF101_subset.tar.gz: UCF101_subset/split/class/clip.avi."""
    pytest.importorskip("av")
    for split, count in (("train", 2), ("val", 1)):
        for label in ("Archery", "BenchPress"):
            folder = root / "UCF101_subset" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                write_video(folder / f"v_{label}_{split}_{i}.avi")
    archive = root / "UCF101_subset.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "UCF101_subset", arcname="UCF101_subset")
    return archive


def test_video_archive_from_the_hub_cache_becomes_sampled_frames(processor, tmp_path, monkeypatch):
    archive = ucf_like_archive(tmp_path / "src")
    cache = tmp_path / "hf" / "hub"
    repo = cache / "datasets--someone--ucf-like"
    snapshot = repo / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)
    (snapshot / archive.name).symlink_to(archive)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    args = DataArguments(
        dataset="someone/ucf-like",
        dataset_archive=archive.name,
        eval_split="val",
        video_column="video",
        max_frames=4,
        id_column="id",
        question="Which exercise?",
        answer_template="{label}",
        numeric_fields=[],
        metric="accuracy",
        labels=["Archery", "BenchPress"],
        image_cache_dir=str(tmp_path / "cache"),
    )
    data = prepare_data(args, processor, None)
    assert len(data.train) == 4 and len(data.eval) == 2 and not data.skipped, data.summary()
    row = data.eval[0]
    assert len(row["images"]) == 4 and all(p.endswith(".png") for p in row["images"])
    assert render(processor, row["messages"]).startswith(
        "<|user|>\n<|image_1|>\n<|image_2|>\n<|image_3|>\n<|image_4|>\n"
    )
    assert row["answers"][0] in ("Archery", "BenchPress")
    frames = [np.asarray(Image.open(p), dtype=np.float32) for p in row["images"]]
    assert not np.array_equal(frames[0], frames[-1])  # different frames, not one repeated
    again = prepare_data(args, processor, None)  # the second run reads the cached frames
    assert again.eval[0]["images"] == row["images"]


def test_a_corrupt_video_is_a_counted_skip(processor, tmp_path):
    pytest.importorskip("av")
    folder = tmp_path / "videos" / "Archery"
    folder.mkdir(parents=True)
    write_video(folder / "good.avi")
    (folder / "bad.avi").write_bytes(b"not a video" * 20)
    args = DataArguments(
        dataset=str(tmp_path / "videos"),
        question="Which?",
        answer_template="{label}",
        numeric_fields=[],
        id_column="id",
        eval_fraction=0,
        image_cache_dir=str(tmp_path / "cache"),
    )
    data = prepare_data(args, processor, None)
    assert data.train["id"] == ["good"]
    assert [(key, err.kind) for _, key, err in data.skipped] == [("bad", "unreadable video")]


TWINS = {
    "docvqa": ("docvqa", "anls"),
    "nlvr2": ("nlvr2", "accuracy"),
    "ucf101": ("frames", "accuracy"),
    "llava": ("messages", "exact_match"),
}


@pytest.mark.parametrize("twin", sorted(TWINS))
def test_demo_twin_trains_evaluates_and_predicts(twin, tiny_dir, tmp_path):
    """Each official task's offline twin end to end: train a few steps, score with its metric, predict."""
    from phi3v_recipe.evaluate import main as evaluate
    from phi3v_recipe.predict import main as predict
    from phi3v_recipe.synthetic import write_task
    from phi3v_recipe.train import main as train

    from .test_train import ROOT

    task, metric = TWINS[twin]
    data_file = write_task(task, tmp_path / "data", rows=24, seed=1)
    recipe = ROOT / "recipes" / f"demo_{twin}.yaml"
    common = ["--config", str(recipe), "--model_name_or_path", str(tiny_dir), "--dataset", str(data_file)]
    out = tmp_path / "out"
    trainer = train([*common, "--output_dir", str(out), "--max_steps", "2", "--eval_fraction", "0.25"])
    assert trainer.state.global_step == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"eval_{metric}" in metrics and f"baseline_{metric}" in metrics and f"base_model_{metric}" in metrics

    scored = evaluate([*common, "--adapter", str(out), "--max_samples", "3", "--skip_base"])
    assert f"eval_{metric}" in scored and 0 <= scored[f"eval_{metric}"] <= 1
    lines = (out / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 3 and {"prediction", "references", "score"} <= set(json.loads(lines[0]))

    row = json.loads(data_file.read_text().splitlines()[0])
    images = [str(data_file.parent / path) for path in row.get("images") or row.get("frames") or [row["image"]]]
    args = ["--adapter", str(out), "--max_new_tokens", "3", "--question", "First?", "--question", "And then?"]
    answers = predict([*args, *[flag for image in images for flag in ("--image", image)]])
    assert len(answers) == 2  # the follow-up was answered with the first turn as history
