import json

import pytest

from phi3v_recipe.data import DEFAULT_ANSWER_TEMPLATE
from phi3v_recipe.evaluate import baseline_predictions, format_table, parse_answer, parse_number, score, token_f1

FIELDS = ["title", "category3_code", "full_price"]
NUMERIC = ["full_price"]


def truth(title, category, price):
    return {"title": title, "category3_code": category, "full_price": price}


def test_answers_parse_with_the_template():
    text = "Product: Small Black Leather Tote, Category: BAGS, Full Price: 1,290.00"
    assert parse_answer(text, DEFAULT_ANSWER_TEMPLATE) == {
        "title": "Small Black Leather Tote",
        "category3_code": "BAGS",
        "full_price": "1,290.00",
    }
    assert (
        parse_answer("  Product: A, B, Category: SHOES, Full Price: $490\n", DEFAULT_ANSWER_TEMPLATE)["title"]
        == "A, B"
    )
    assert parse_answer("Product: Tote, Category: BAGS", DEFAULT_ANSWER_TEMPLATE) is None
    assert parse_answer("I think it is a bag", DEFAULT_ANSWER_TEMPLATE) is None
    assert parse_answer("It is red.", "It is {colour}.") == {"colour": "red"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1,290.00", 1290.0),
        ("$490", 490.0),
        ("1290", 1290.0),
        ("12.5", 12.5),
        ("about 5", None),
        ("", None),
        ("n/a", None),
    ],
)
def test_odd_prices(text, value):
    assert parse_number(text) == value


def test_token_f1():
    assert token_f1("Small Black Tote", "small black tote") == 1.0
    assert token_f1("Black Tote", "Small Black Leather Tote") == pytest.approx(2 * (1.0 * 0.5) / 1.5)
    assert token_f1("Scarf", "Tote") == 0.0


def test_score_on_hand_made_predictions():
    truths = [
        truth("Small Black Tote", "BAGS", 1000.0),
        truth("Red Scarf", "SCARVES", 500.0),
        truth("Camel Trench Coat", "COATS", 2000.0),
        truth("Navy Cap", "HATS", 400.0),
    ]
    predictions = [
        {"title": "small black tote", "category3_code": "BAGS", "full_price": "$1,050"},  # exact, 5% off
        {"title": "Red Stole", "category3_code": "SCARVES", "full_price": "400.00"},  # half the title, 20% off
        {"title": "Trench Coat", "category3_code": "BAGS", "full_price": "lots"},  # price unparseable
        None,  # the whole answer unparseable
    ]
    m = score(predictions, truths, FIELDS, NUMERIC)
    assert m["parse_rate"] == 0.75
    assert m["category3_code_accuracy"] == 0.5
    assert m["title_accuracy"] == 0.25
    assert m["title_token_f1"] == pytest.approx((1.0 + 0.5 + 0.8 + 0.0) / 4)
    assert m["full_price_mae"] == pytest.approx((50 + 100) / 2)  # over the two parsed prices
    assert m["full_price_mdape"] == pytest.approx((0.05 + 0.2) / 2)
    assert m["full_price_within_10pct"] == 0.25  # over all four rows: misses count


def test_nothing_parsed_gives_no_error_figures():
    m = score([None, None], [truth("A", "B", 1.0), truth("C", "D", 2.0)], FIELDS, NUMERIC)
    assert m["parse_rate"] == 0 and m["full_price_mae"] is None and m["full_price_within_10pct"] == 0


def test_baselines_are_train_median_and_majority():
    train = [truth("Tote", "BAGS", "100.0"), truth("Tote", "BAGS", "300.0"), truth("Cap", "HATS", "1,000")]
    [guess] = baseline_predictions(train, 1, FIELDS, NUMERIC)
    assert guess == {"title": "Tote", "category3_code": "BAGS", "full_price": "300"}


def test_table_lists_every_system():
    table = format_table({"model": {"a": 0.5, "b": None}, "baseline": {"a": 0.25, "b": 3.0}})
    lines = table.splitlines()
    assert "model" in lines[0] and "baseline" in lines[0]
    assert lines[1].split() == ["a", "0.5", "0.25"] and lines[2].split() == ["b", "-", "3"]


def test_training_writes_scored_predictions(tiny_dir, tmp_path):
    from phi3v_recipe.synthetic import write_sample_set
    from phi3v_recipe.train import main

    from .test_train import demo_args

    csv_path = write_sample_set(tmp_path / "s", rows=30, seed=1)
    out = tmp_path / "out"
    main(demo_args(tiny_dir, csv_path, out, "--max_steps", "2", "--max_rows", "30", "--eval_fraction", "0.2"))
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "eval_parse_rate",
        "eval_category3_code_accuracy",
        "eval_full_price_within_10pct",
        "base_model_parse_rate",
        "baseline_category3_code_accuracy",
        "baseline_full_price_mae",
    ):
        assert key in metrics, key
    assert metrics["baseline_parse_rate"] == 1.0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["truth"].startswith("Product: ") for r in rows)
    assert "eval_category3_code_accuracy" in (out / "README.md").read_text()
