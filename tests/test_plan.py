"""`phi3v-recipe plan`: every shipped GPU recipe planned offline in seconds, its hardware line in the README and in
the recipe's header taken from it, the verdict and its alternatives, and the one-line mistakes."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from phi3v_recipe.errors import UserError
from phi3v_recipe.plan import GIB, GPUS, make_plan

ROOT = Path(__file__).resolve().parents[1]
FSDP_GPUS = 8  # accelerate_configs/fsdp.yaml's num_processes, as the README's row says


def readme_hardware() -> dict[str, str]:
    """recipe name -> the hardware cell of its row in the README's recipe table (GPU recipes only)."""
    cells = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("| `") and "GPU" in line:
            names = re.findall(r"`(\w+)\.yaml`", line.split("|")[1])
            for name in names:
                if not name.startswith("demo"):
                    cells[name] = line.rstrip(" |").rsplit("|", 1)[1].strip()
    return cells


@pytest.fixture(scope="module")
def workdir(tiny_dir, tiny4_dir, tmp_path_factory):
    """A folder as a fresh clone has it after make tiny and make sample-data (smaller sets), the current one while
    the module's tests run: the recipes' twins read data/sample/, the processors come from outputs/tiny-*."""
    import os

    folder = tmp_path_factory.mktemp("plan")
    (folder / "outputs").mkdir()
    (folder / "outputs" / "tiny-phi3v").symlink_to(tiny_dir)
    (folder / "outputs" / "tiny-phi4mm").symlink_to(tiny4_dir)
    command = [sys.executable, "-m", "phi3v_recipe.synthetic", "--task", "all", "--rows", "40", "--out", "data/sample"]
    subprocess.run(command, cwd=folder, check=True, capture_output=True, timeout=600)
    before = Path.cwd()
    os.chdir(folder)
    yield folder
    os.chdir(before)


@pytest.fixture(scope="module")
def plans(workdir):
    """Each GPU recipe of the README's table, planned (its synthetic twin's rows, the tiny model's processor)."""
    return {
        name: make_plan(["--config", str(ROOT / "recipes" / f"{name}.yaml")] + (
            ["--num_gpus", str(FSDP_GPUS)] if "fsdp" in name else []
        ))
        for name in readme_hardware()
    }  # fmt: skip


def test_every_gpu_recipe_is_planned_and_its_readme_and_header_hardware_lines_are_the_plans(plans):
    assert len(plans) >= 10
    cells = readme_hardware()
    for name, plan in plans.items():
        assert cells[name].startswith(plan["hardware"]), (name, cells[name], plan["hardware"])
        header = next(
            line for line in (ROOT / "recipes" / f"{name}.yaml").read_text().splitlines() if "Hardware:" in line
        )
        assert header.startswith(f"# Hardware: {plan['hardware']} "), (name, header, plan["hardware"])
        result = plan["plan"]
        assert result["fits"] and result["memory_gib"]["total"] > result["memory_gib"]["weights"] > 1
        assert plan["rows_from"].startswith("the synthetic twin")  # the real sets are not on this machine
        assert plan["row_tokens"]["min"] <= plan["row_tokens"]["median"] <= plan["row_tokens"]["max"]


def test_a_step_that_does_not_fit_a_small_gpu_gets_the_nearest_settings_that_do(workdir):
    """NLVR2 (two 16-crop images, ~5,100 tokens a row, checkpointing off) on a 24 GB L4: does not fit; every
    alternative fits the L4 and turns the cheapest knobs first (checkpointing before fewer crops)."""
    plan = make_plan(["--config", str(ROOT / "recipes/nlvr2_lora.yaml"), "--gpu", "l4"])
    assert plan["gpu"] == "L4" and not plan["plan"]["fits"]
    assert plan["plan"]["memory_gib"]["total"] > GPUS["L4"][1] / 1024
    alternatives = plan["alternatives"]
    assert alternatives and all(
        a["fits"] and a["memory_gib"]["total"] * GIB <= GPUS["L4"][1] * 2**20 for a in alternatives
    )
    first = alternatives[0]["setting"]
    assert first["every"] is not None and first["crops"] == 16  # checkpointing turned on, the crops kept


def test_full_fine_tuning_shards_over_more_gpus(workdir):
    """4.15B parameters with fp32 weights, gradients and AdamW moments (16 bytes each) do not fit one 40 GB A100;
    sharded over 8 they do, and the alternatives add GPUs."""
    recipe = ["--config", str(ROOT / "recipes/burberry_full_fsdp.yaml"), "--gpu", "A100-40GB"]
    one, eight = make_plan(recipe), make_plan([*recipe, "--num_gpus", "8"])
    assert not one["plan"]["fits"] and eight["plan"]["fits"]
    assert eight["plan"]["memory_gib"]["trainable_state"] == pytest.approx(
        one["plan"]["memory_gib"]["trainable_state"] / 8, rel=0.01
    )
    assert any(a["setting"]["gpus"] > 1 for a in one["alternatives"])


def test_json_is_the_plan_and_mistakes_are_one_line_errors(workdir):
    command = [sys.executable, "-m", "phi3v_recipe.plan", "--config", str(ROOT / "recipes/burberry_qlora.yaml")]
    done = subprocess.run(
        [*command, "--json", "--gpu", "RTX4090"], cwd=workdir, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    plan = json.loads(done.stdout)
    assert plan["gpu"] == "RTX4090" and plan["training"] == "QLoRA" and plan["plan"]["fits"]
    for extra, message in [
        (["--gpu", "B300"], "error: unknown GPU 'B300'. Known: H100,"),
        (["--gpu", "H10"], "Did you mean H100?"),
        (["--num_gpus", "0"], "error: --num_gpus must be at least 1, got 0."),
        (["--per_device_train_batch_sise", "2"], "Did you mean --per_device_train_batch_size?"),
    ]:
        failed = subprocess.run([*command, *extra], cwd=workdir, capture_output=True, text=True, timeout=120)
        assert failed.returncode != 0 and message in failed.stderr and len(failed.stderr.strip().splitlines()) == 1, (
            failed.stderr
        )
    with pytest.raises(UserError, match="is not on this machine: give --dataset a pairs file"):
        make_plan(["--config", str(ROOT / "recipes/demo_dpo.yaml"), "--dataset", "nowhere/pairs.jsonl"])


def test_grpo_holds_the_kv_cache_of_one_generation_and_trains_the_sft_adapters_lora(workdir):
    """burberry_grpo: the SFT adapter trains on as LoRA (not full fine-tuning); a row is the prompt with a whole
    completion; the generation batch (batch x accumulation steps) writes its KV cache before the training passes."""
    plan = make_plan(["--config", str(ROOT / "recipes/burberry_grpo.yaml")])
    sft = make_plan(["--config", str(ROOT / "recipes/burberry_lora.yaml"), "--per_device_train_batch_size", "8"])
    memory = plan["plan"]["memory_gib"]
    assert (
        plan["training"].startswith("LoRA (rank 16: lora_r stands in")
        and memory["weights"] == sft["plan"]["memory_gib"]["weights"]
    )
    assert plan["stage"] == {"name": "grpo", "sequences": 1, "generated": 4, "groups": 8, "rank": None}
    assert memory["generation"] > memory["activations"] + memory["logits"]  # 32 prompts' cache outweighs 8 rows'
    counted = memory["total"] - memory["margin"]
    assert counted == pytest.approx(
        memory["weights"] + memory["trainable_state"] + memory["vision"] + memory["generation"], abs=0.02
    )  # the cache and the activations are not held together
    assert plan["answer_tokens_median"] == 64  # max_completion_length
    assert all(a["setting"]["batch"] * 4 % 8 == 0 for a in plan["alternatives"])  # whole groups of 8 answers


def test_dpo_plans_a_pairs_file_at_twice_the_batch(workdir, tmp_path):
    """demo_dpo on a pairs file: each pair is two rows (chosen and rejected) at the longer answer."""
    from PIL import Image

    Image.new("RGB", (640, 480), "navy").save(tmp_path / "a.png")
    rows = [
        {"images": ["a.png"], "prompt": "What colour?", "chosen": "Navy " * 30, "rejected": "Red."},
        {"images": ["a.png", "a.png"], "prompt": "Same?", "chosen": "Yes.", "rejected": "No."},
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["--config", str(ROOT / "recipes/demo_dpo.yaml"), "--dataset", str(tmp_path / "pairs.jsonl")]
    plan = make_plan([*args, "--model_name_or_path", "outputs/tiny-phi3v", "--per_device_train_batch_size", "2"])
    assert plan["plan"]["longest_batch"]["rows"] == 4 and "generation" not in plan["plan"]["memory_gib"]
    assert plan["rows_from"].startswith("the recipe's pairs") and plan["plan"]["rows"] == 2
    assert plan["row_tokens"]["max"] > plan["row_tokens"]["min"] > 30  # two images against one long answer


def test_a_recipe_whose_model_and_rows_are_here_is_planned_on_them_with_its_epoch(workdir):
    """demo.yaml: the tiny model's own config and processor, the synthetic set's own rows (40 here): no twin, and the
    time of an epoch of them."""
    command = [sys.executable, "-m", "phi3v_recipe.plan", "--config", str(ROOT / "recipes/demo.yaml"), "--gpu", "L4"]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Rows: 40 from the recipe's rows (data/sample/burberry.csv)" in done.stdout
    assert "the model's own processor" in done.stdout and "not on this machine" not in done.stdout
    assert "an epoch of these rows: " in done.stdout and "Verdict: fits" in done.stdout
