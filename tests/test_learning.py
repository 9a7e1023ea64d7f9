"""Slow: a small model trained on the synthetic set beats the trivial baselines (`make demo-learn`)."""

import json
from pathlib import Path

import pytest

from phi3v_recipe.synthetic import write_sample_set
from phi3v_recipe.train import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_model_beats_the_baselines_on_category_and_price(tiny_dir, tmp_path):
    csv_path = write_sample_set(tmp_path / "sample", rows=3040, seed=0)
    out = tmp_path / "out"
    main(
        [
            "--config",
            str(ROOT / "recipes/demo_learn.yaml"),
            "--model_name_or_path",
            str(tiny_dir),
            "--dataset",
            str(csv_path),
            "--output_dir",
            str(out),
        ]
    )
    m = json.loads((out / "metrics.json").read_text())
    print({k: v for k, v in m.items() if k.startswith(("eval_", "baseline_"))})
    assert m["eval_parse_rate"] > 0.9
    assert m["eval_category3_code_accuracy"] > m["baseline_category3_code_accuracy"]
    assert m["eval_full_price_mae"] < m["baseline_full_price_mae"]
    assert m["eval_full_price_within_10pct"] > m["baseline_full_price_within_10pct"]


@pytest.mark.slow
def test_tiny_model_beats_the_majority_answer_on_the_document_vqa_stand_in(tiny_dir, tmp_path):
    from phi3v_recipe.synthetic import write_task

    data_file = write_task("docvqa", tmp_path / "docvqa", rows=1500, seed=0)
    out = tmp_path / "out"
    main(
        [
            *("--config", str(ROOT / "recipes/demo_docvqa.yaml"), "--model_name_or_path", str(tiny_dir)),
            *("--dataset", str(data_file), "--output_dir", str(out)),
            # Full fine-tuning, the random CLIP included, as demo_learn.yaml does for the Burberry set.
            *("--use_peft", "false", "--freeze_vision_tower", "false", "--learning_rate", "3e-3"),
            *("--max_steps", "1500", "--logging_steps", "250", "--eval_fraction", "0.1"),
        ]
    )
    m = json.loads((out / "metrics.json").read_text())
    print({k: v for k, v in m.items() if k.startswith(("eval_", "baseline_"))})
    assert m["eval_anls"] > m["baseline_anls"] + 0.1
    assert m["eval_exact_match"] > m["baseline_exact_match"]
