"""After SFT. stage grpo: the reward is evaluate's score of the same answer; GRPO takes steps through the recipe on
the tiny models (one and several images a row), with the built-in and a custom reward, and resumes exactly (slow).
stage dpo: pairs files checked row by row, pairs built from the model's own samples, DPO steps through the recipe."""

import json
import statistics
from pathlib import Path

import pytest

from phi3v_recipe.arguments import RecipeArguments
from phi3v_recipe.evaluate import score_answers
from phi3v_recipe.reinforce import UNPARSED, metric_reward_of, reward_functions
from phi3v_recipe.train import main

ROOT = Path(__file__).resolve().parents[1]
ROW = {"title": "Large Black Check Wallet", "category3_code": "WALLETS", "full_price": 690.0}


@pytest.mark.parametrize(
    "answer",
    [
        "Product: Large Black Check Wallet, Category: WALLETS, Full Price: 690",
        "Product: Small Black Wallet, Category: WALLETS, Full Price: 700",
        "Product: Large Red Tote, Category: BAGS, Full Price: 2890",
        "Product: Large Black Check Wallet, Category: WALLETS, Full Price: many",
    ],
)
def test_the_template_reward_is_evaluates_token_f1_and_within_10pct_of_the_same_answer(answer):
    recipe = RecipeArguments()
    metrics = score_answers(recipe, [answer], [ROW])
    expected = statistics.fmean(
        [metrics["title_token_f1"], metrics["category3_code_token_f1"], metrics["full_price_within_10pct"]]
    )
    assert metric_reward_of(recipe, answer, ROW) == pytest.approx(expected)


def test_an_answer_that_does_not_parse_is_rewarded_zero_and_scored_as_a_miss():
    recipe = RecipeArguments()
    answer = "A wallet, I think."
    assert metric_reward_of(recipe, answer, ROW) == UNPARSED == 0.0
    assert score_answers(recipe, [answer], [ROW])["parse_rate"] == 0.0


@pytest.mark.parametrize(
    ("keys", "answer", "references", "metric"),
    [
        ({"data_format": "qa", "metric": "anls"}, "Invoice no 12", ["Invoice No. 12", "12"], "anls"),
        ({"data_format": "qa", "metric": "exact_match"}, "invoice.", ["Invoice"], "exact_match"),
        ({"data_format": "texts", "metric": "accuracy", "labels": ["True", "False"]}, "true", ["True"], "accuracy"),
        ({"data_format": "texts", "metric": "accuracy", "labels": ["True", "False"]}, "maybe", ["True"], "accuracy"),
    ],
)
def test_the_other_metrics_reward_what_evaluate_scores(keys, answer, references, metric):
    recipe = RecipeArguments(**keys)
    row = {"answers": references}
    assert metric_reward_of(recipe, answer, row) == pytest.approx(score_answers(recipe, [answer], [row])[metric])


def test_the_format_reward_and_a_function_of_your_own(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def shorter(prompts, completions, **kw):\n    return [-len(c) for c in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    metric, form, own = reward_functions(RecipeArguments(rewards=["metric", "format", "my_rewards:shorter"]))
    good = "Product: Large Black Check Wallet, Category: WALLETS, Full Price: 690"
    completions = [[{"role": "assistant", "content": good}], [{"role": "assistant", "content": "no idea"}]]
    row = [json.dumps(ROW)] * 2
    assert metric([None] * 2, completions, row=row) == [1.0, 0.0]
    assert form([None] * 2, completions, row=row) == [1.0, 0.0]
    assert own([None] * 2, ["ab", "abcd"]) == [-2, -4]
    from phi3v_recipe.errors import UserError

    with pytest.raises(UserError, match="has no function"):
        reward_functions(RecipeArguments(rewards=["my_rewards:longer"]))


def grpo_args(tiny_dir, out, dataset, *extra):
    return [
        "--config", str(ROOT / "recipes/demo_grpo.yaml"), "--model_name_or_path", str(tiny_dir),
        "--dataset", str(dataset), "--output_dir", str(out), "--max_rows", "24", "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--num_generations", "2", "--max_completion_length", "8",
        "--save_strategy", "no", "--scored_evaluation", "false", "--report_to", "none",
        "--dataloader_num_workers", "0", "--overwrite_output_dir", "true", "--logging_steps", "1", *extra,
    ]  # fmt: skip


def test_grpo_takes_steps_through_the_recipe_and_saves_its_adapter(tiny_dir, tmp_path):
    from phi3v_recipe.synthetic import write_sample_set

    dataset = write_sample_set(tmp_path / "data", rows=24, seed=0)
    trainer = main(grpo_args(tiny_dir, tmp_path / "out", dataset, "--rewards", "metric", "format"))
    logged = [entry for entry in trainer.state.log_history if "rewards/metric/mean" in entry]
    assert len(logged) == 2 and all("rewards/format/mean" in entry for entry in logged)
    assert trainer.state.global_step == 2
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_grpo_on_rows_with_two_images_and_the_accuracy_reward(tiny_dir, tmp_path):
    from phi3v_recipe.synthetic import write_task

    dataset = write_task("nlvr2", tmp_path / "data", rows=24, seed=0)
    trainer = main(
        grpo_args(
            tiny_dir,
            tmp_path / "out",
            dataset,
            "--data_format",
            "texts",
            "--metric",
            "accuracy",
            "--labels",
            "True",
            "False",
            "--image_column",
            "null",
            "--id_column",
            "id",
        )  # fmt: skip
    )
    assert trainer.state.global_step == 2
    assert all(0.0 <= e["rewards/metric/mean"] <= 1.0 for e in trainer.state.log_history if "rewards/metric/mean" in e)


def test_phi4_images_reach_the_model_packed_as_grpo_carries_them_exactly_as_unpacked(tiny4_dir):
    """TRL 1.16's GRPOTrainer carries a batch's images only as pixel_values (one entry per image) and image_sizes:
    Phi-4's crops and crop masks go packed in one tensor, and the model reads them back as its own inputs."""
    import torch
    from PIL import Image

    from phi3v_recipe.families import phi4mm

    processor = phi4mm.load_processor(tiny4_dir, crops=4)
    images = [Image.new("RGB", (500, 300), "navy"), Image.new("RGB", (100, 700), "red"), Image.new("RGB", (60, 60))]
    texts = ["<|user|><|image|>What?<|end|><|assistant|>", "<|user|><|image|><|image|>Which?<|end|><|assistant|>"]
    model = phi4mm_model(tiny4_dir)
    plain = processor(text=texts, images=images, return_tensors="pt")
    packed = phi4mm.for_grpo(model, processor)(text=texts, images=images, return_tensors="pt")
    assert set(packed) == {"input_ids", "attention_mask", "pixel_values", "image_sizes"}
    assert packed["pixel_values"].shape[:3] == (3, plain["image_pixel_values"].shape[1], 4)  # one entry per image
    assert plain["image_attention_mask"].min() == 0  # the crops of the small images are masked in part
    back = phi4mm.unpacked(dict(packed), model.config.vision_config.patch_size)
    assert torch.equal(back["image_pixel_values"], plain["image_pixel_values"])
    assert torch.equal(back["image_attention_mask"], plain["image_attention_mask"])
    with torch.no_grad():
        assert torch.equal(model(**packed).logits, model(**plain).logits)
        greedy = {"max_new_tokens": 3, "do_sample": False}
        assert torch.equal(model.generate(**packed, **greedy), model.generate(**plain, **greedy))


def phi4mm_model(path):
    from transformers import Phi4MultimodalForCausalLM

    return Phi4MultimodalForCausalLM.from_pretrained(path).eval()


def test_grpo_on_phi4_multimodal_takes_steps_and_saves_its_vision_lora(tiny4_dir, tmp_path):
    """GRPO on the other family: its own vision LoRA trained on, images packed as TRL carries them."""
    from phi3v_recipe.synthetic import write_sample_set

    dataset = write_sample_set(tmp_path / "data", rows=8, seed=0)
    args = grpo_args(tiny4_dir, tmp_path / "out", dataset, "--num_crops", "null", "--dynamic_hd", "1")
    args += ["--per_device_train_batch_size", "2", "--max_completion_length", "4"]
    trainer = main(args)
    assert trainer.state.global_step == 2
    assert all(0.0 <= e["rewards/metric/mean"] <= 1.0 for e in trainer.state.log_history if "rewards/metric/mean" in e)
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def rewards_and_losses(out: Path, step: int) -> list[tuple]:
    history = json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())["log_history"]
    return [(e["step"], e["loss"], e["rewards/metric/mean"]) for e in history if "rewards/metric/mean" in e]


@pytest.mark.slow
def test_two_process_grpo_stopped_at_a_checkpoint_and_resumed_is_the_run_that_never_stopped(tiny_dir, tmp_path):
    """GRPO under `accelerate launch` with two processes (generation and the loss split as TRL splits them): four
    steps straight, against two steps, a checkpoint, and a resume to four: the same sampled answers' rewards and the
    same losses at steps 3 and 4."""
    from phi3v_recipe.synthetic import write_sample_set

    from .conftest import free_port
    from .test_train import clean_env, launch_two_processes

    dataset = write_sample_set(tmp_path / "data", rows=40, seed=0)
    env = clean_env(tmp_path)

    def args(out, steps, *extra):
        flags = grpo_args(tiny_dir, out, dataset, "--max_steps", str(steps), "--save_strategy", "steps")
        return [*flags, "--save_steps", "2", "--overwrite_output_dir", "false", *extra]

    straight = launch_two_processes(args(tmp_path / "straight", 4), env, free_port())
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = launch_two_processes(args(tmp_path / "resumed", 2), env, free_port())
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = launch_two_processes(args(tmp_path / "resumed", 4, "--resume_from_checkpoint", "true"), env, free_port())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout
    assert rewards_and_losses(tmp_path / "resumed", 4) == rewards_and_losses(tmp_path / "straight", 4)


# stage: dpo


def test_pairs_are_the_best_and_the_worst_answer_and_none_when_all_score_alike():
    from phi3v_recipe.pairs import best_and_worst

    assert best_and_worst(["a", "b", "c"], [0.2, 0.9, 0.1]) == ("b", "c")
    assert best_and_worst(["a", "b"], [0.5, 0.5]) is None


def test_a_pairs_file_is_checked_row_by_row_and_bad_rows_are_skipped_with_the_reason(tmp_path):
    from PIL import Image

    from phi3v_recipe.pairs import read_pairs

    Image.new("RGB", (40, 30), "red").save(tmp_path / "a.png")
    rows = [
        {"images": ["a.png"], "prompt": "What is it?", "chosen": "A red square.", "rejected": "A cat."},
        {"images": ["missing.png"], "prompt": "What is it?", "chosen": "x", "rejected": "y"},
        {"images": ["a.png"], "prompt": "What is it?", "chosen": "", "rejected": "y"},
        {"images": ["a.png"], "prompt": "What is it?", "chosen": "same", "rejected": "same"},
        {"images": ["a.png", "a.png"], "prompt": "Compare.", "chosen": "Equal.", "rejected": "Different."},
        {"images": [], "prompt": "Say hi.", "chosen": "Hi.", "rejected": "No."},  # every stage trains on images
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = read_pairs(RecipeArguments(dataset=str(tmp_path / "pairs.jsonl"), eval_fraction=0))
    assert len(data.train) == 2 and data.eval is None
    assert sorted(err.kind for _, _, err in data.skipped) == [
        "chosen equals rejected",
        "empty chosen",
        "missing image file",
        "no image",
    ]
    two = data.train[1]
    assert len(two["images"]) == 2 and two["images"][0].size == (40, 30)
    assert [item["type"] for item in two["prompt"][0]["content"]] == ["image", "image", "text"]
    assert two["chosen"][0]["content"][0]["text"] == "Equal."


def test_dpo_takes_steps_on_pairs_built_from_the_models_own_samples(tiny_dir, tmp_path, monkeypatch):
    """phi3v-recipe pairs on the tiny model (3 samples a row at temperature 1, best against worst), then DPO through
    the recipe on them: two steps, an adapter saved. The tiny random model's answers never parse, so every metric
    reward would be 0 and no row would make a pair: the reward is replaced by the answer's length here (the metric
    reward itself is tested above against evaluate)."""
    from phi3v_recipe import pairs, reinforce
    from phi3v_recipe.synthetic import write_sample_set

    monkeypatch.setattr(reinforce, "metric_reward_of", lambda recipe, answer, row: float(len(answer)))
    dataset = write_sample_set(tmp_path / "data", rows=24, seed=0)
    out = pairs.main(
        [
            "--config", str(ROOT / "recipes/demo.yaml"), "--model_name_or_path", str(tiny_dir),
            "--adapter", str(tiny_dir), "--dataset", str(dataset), "--max_rows", "16", "--out", str(tmp_path / "p.jsonl"),
            "--samples", "3", "--max_new_tokens", "8", "--report_to", "none",
        ]
    )  # fmt: skip
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written and all(len(row["chosen"]) == row["chosen_reward"] > row["rejected_reward"] for row in written)
    trainer = main(
        [
            "--config", str(ROOT / "recipes/demo_dpo.yaml"), "--model_name_or_path", str(tiny_dir),
            "--dataset", str(out), "--output_dir", str(tmp_path / "dpo"), "--max_steps", "2", "--logging_steps", "1",
            "--eval_fraction", "0", "--save_strategy", "no", "--report_to", "none", "--overwrite_output_dir", "true",
        ]
    )  # fmt: skip
    assert trainer.state.global_step == 2
    assert any("rewards/margins" in entry for entry in trainer.state.log_history)
    assert (tmp_path / "dpo" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_grpo_stops_on_sigterm_with_a_checkpoint_and_resumes_from_it(tiny_dir, tmp_path):
    """As SFT does: the step ends, one checkpoint is written, exit 143 with the resume command; the resume runs."""
    import signal
    import subprocess
    import sys

    from phi3v_recipe.synthetic import write_sample_set

    from .conftest import killed_after
    from .test_train import clean_env

    dataset = write_sample_set(tmp_path / "data", rows=24, seed=0)
    out = tmp_path / "out"
    args = grpo_args(tiny_dir, out, dataset, "--max_steps", "400", "--overwrite_output_dir", "false")
    command = [sys.executable, "-m", "phi3v_recipe.train", *args]
    run = subprocess.Popen(
        command, cwd=ROOT, env=clean_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    with killed_after(run, 600):  # only a hang reaches it
        lines = [run.stdout.readline()]
        while lines[-1] and "rewards/metric/mean" not in lines[-1]:
            lines.append(run.stdout.readline())
        run.send_signal(signal.SIGTERM)
        rest, _ = run.communicate(timeout=300)
    output = "".join(lines) + rest
    assert run.returncode == 128 + signal.SIGTERM, output[-3000:]
    [checkpoint] = list(out.glob("checkpoint-*"))
    step = int(checkpoint.name.split("-")[1])
    assert f"Stopped on SIGTERM after step {step}." in output and "Traceback" not in output
    resumed = subprocess.run(
        [*command, "--resume_from_checkpoint", "true", "--max_steps", str(step + 1)],
        cwd=ROOT, env=clean_env(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {checkpoint}" in resumed.stdout


def test_dpo_on_phi4_multimodal_continues_its_vision_lora(tiny4_dir, tmp_path):
    """The other family takes DPO as it is (its own vision LoRA trained on)."""
    from PIL import Image

    Image.new("RGB", (64, 48), "navy").save(tmp_path / "a.png")
    rows = [
        {"images": ["a.png"], "prompt": "What colour?", "chosen": f"Navy {i}.", "rejected": f"Red {i}."}
        for i in range(4)
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    trainer = main(
        [
            "--config", str(ROOT / "recipes/demo_dpo.yaml"), "--model_name_or_path", str(tiny4_dir),
            "--num_crops", "null", "--dynamic_hd", "1", "--dataset", str(tmp_path / "pairs.jsonl"),
            "--output_dir", str(tmp_path / "dpo"), "--max_steps", "1", "--eval_fraction", "0",
            "--save_strategy", "no", "--report_to", "none", "--overwrite_output_dir", "true", "--logging_steps", "1",
        ]
    )  # fmt: skip
    assert trainer.state.global_step == 1
    assert (tmp_path / "dpo" / "adapter_model.safetensors").is_file()


def test_trls_fused_head_at_labelled_positions_only_gives_the_same_log_probabilities_on_the_cpu(tiny_dir, monkeypatch):
    """GRPO and DPO train through TRL's fused LM head, which on the CPU projects every position unless told to keep
    the labelled ones (as it does on a GPU): the same log-probabilities, and gradients, either way."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer import utils
    from trl.trainer.utils import add_fused_lm_head

    from phi3v_recipe.loss import fused_head_at_labelled_positions

    projected = []  # the positions each call sends through the head
    head = utils._ChunkedLogProbFunction
    monkeypatch.setattr(utils, "_ChunkedLogProbFunction", type("Spy", (), {"apply": staticmethod(
        lambda hidden, *rest: projected.append(hidden.shape[0]) or head.apply(hidden, *rest)
    )}))  # fmt: skip

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    add_fused_lm_head(model)
    ids = torch.randint(3, 1000, (2, 40))
    labels = ids.masked_fill(torch.arange(40) < 30, -100)  # the last 10 tokens are the completion

    def log_probs_and_grad():
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.log_probs.sum().backward()
        return out.log_probs.detach(), model.lm_head.weight.grad.clone()

    every, every_grad = log_probs_and_grad()
    with fused_head_at_labelled_positions():
        kept, kept_grad = log_probs_and_grad()
    assert projected == [2 * 39, 2 * 10]  # every position, then the labelled ones only
    assert (every[:, :29] == 0).all() and (every[:, 29:] != 0).all()  # zero off the labels, either way
    torch.testing.assert_close(kept, every)
    torch.testing.assert_close(kept_grad, every_grad)
