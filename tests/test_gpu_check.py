"""`make gpu-check` at tiny size on the CPU: every part runs, with TRL, datasets, bitsandbytes and wandb blocked as a
bare GPU machine lacks them (the training part then says it was skipped), and the training part with them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BARE = "import sys\nfor name in ('trl', 'datasets', 'bitsandbytes', 'wandb'):\n    sys.modules[name] = None\n"


def test_gpu_check_runs_every_part_at_tiny_size_without_trl_datasets_bitsandbytes_or_wandb(tmp_path):
    out = tmp_path / "gpu-check.json"
    code = BARE + (
        "from phi3v_recipe.bench.gpu import main\n"
        f"main(['--size', 'tiny', '--batches', '1,2', '--steps', '1', '--out', {str(out)!r}])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    runs = {(r["mode"], r["batch"]): r for r in results["steps"]}
    assert set(runs) == {
        ("ours", 1),
        ("ours", 2),
        ("official-frozen", 1),
        ("official-frozen", 2),
        ("official-frozen-bs1", 1),
    }
    for run in runs.values():
        assert run["samples_per_s"] > 0 and run["peak_gib"] > 0 and all(0 < loss < 20 for loss in run["losses"])
        assert run["mfu"] is None  # no GPU, no MFU
    assert runs["ours", 1]["plan_gib"] > 0 and runs["ours", 2]["plan_gib"] > runs["ours", 1]["plan_gib"]
    assert runs["official-frozen", 2]["peak_gib"] > runs["ours", 2]["peak_gib"]  # every position through the head
    numerics = results["numerics"]
    assert numerics["relative_logit_error"] < 0.05 and numerics["top1_agreement"] > 0.9
    assert numerics["greedy_cache_equals_no_cache"] is True
    assert results["training"] == {"skipped": "trl and datasets not installed"}
    assert "1. Training steps, tiny model on CPU" in done.stdout


@pytest.mark.slow  # two training runs (~30 s); resuming itself is tested in the default tier by test_reliability
def test_gpu_checks_training_part_trains_two_steps_and_resumes_to_three(tmp_path):
    from phi3v_recipe.bench.gpu import part_training

    result = part_training(tmp_path)
    assert result == {"first_run_ok": True, "resumed_run_ok": True, "steps_after_resume": 3, "error": None}, result
