"""The memory of one real training step, counted exactly, on the CPU: what a recipe's step holds, part by part.

    python -m phi3v_recipe.bench.step_memory --config recipes/burberry_lora.yaml --model DIR [--batch 1]
        [--every N | --no_checkpointing] [--set KEY=VALUE ...] [--out step.json]

The step is the recipe's own: ``phi3v_recipe.train.build_trainer`` and ``trainer.train()`` for two optimiser steps
with the recipe's LoRA, num_crops, dtype and checkpointing, on the CPU (``use_cpu``) under bf16 autocast as the GPU
runs it, on its synthetic twin's rows (``smoke.TWINS``): the same batch twice, since the second step holds AdamW's moments,
as every later step does. Counted:

- weights: the bytes of every parameter and buffer that does not train;
- trainable: the trained parameters, their gradients and AdamW's two moments (read from the optimiser's state);
- saved: every tensor autograd keeps for the backward pass during a forward of the model and still holds when it
  ends (``torch.autograd.graph.saved_tensors_hooks``), each storage once, the weights left out; the T x T attention
  probabilities (SDPA's math kernel on the CPU keeps them; a GPU's flash / memory-efficient kernels do not) apart;
- peak: the most bytes held at once over the two steps (forward, backward, optimiser), from the allocator's own
  events (``torch.profiler`` with ``profile_memory``), on top of the weights and trainable bytes held before them.

The stages after SFT run too (``stage: grpo``: one generation of the batch's completions a step, ``num_generations``
= the batch; ``stage: dpo``), their fused LM head projecting only the labelled positions, as on a GPU
(``train.main`` runs every stage so).

Not counted: the CUDA context and the caching allocator's fragmentation (a GPU's share: see ``phi3v_recipe.memory``).
"""

import json
import os
import tempfile
import weakref
from pathlib import Path

from ..errors import ArgumentParser, run

GIB = 2**30


def step_overrides(recipe_path: Path, model: str, batch: int, out_dir: str, every: int | None) -> dict:
    """The recipe as a one-step run on ``model`` (its twin's data), checkpointing every ``every``-th layer or off."""
    from ..smoke import smoke_recipe

    recipe = smoke_recipe(recipe_path) | {
        "model_name_or_path": model,
        "bf16": True,  # bf16 autocast on the CPU, as the recipe's GPU step runs it
        "max_steps": 2,  # the second step's peak holds AdamW's moments, made by the first step's update
        "per_device_train_batch_size": batch,
        "output_dir": out_dir,
        "max_rows": batch,  # one batch, the same rows in both steps and in every measured setting
        "eval_fraction": 0.0,
        "train_sampling_strategy": "sequential",
    }
    if recipe.get("stage") == "grpo":  # the batch's completions answer one prompt; one generation a step
        recipe |= {"num_generations": batch, "gradient_accumulation_steps": 1, "steps_per_generation": 1}
    if every is None:
        recipe |= {"activation_checkpointing": False}
    else:
        recipe |= {
            "activation_checkpointing": True,
            "activation_checkpointing_kwargs": {"use_reentrant": False, "every_n_layers": every},
        }
    return recipe


class SavedBytes:
    """Counts the storages autograd saves during each forward of the model (``start`` to ``stop``), the weights left
    out; ``most``: the most one forward saved."""

    def __init__(self, model):
        self.exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.exclude |= {b.untyped_storage().data_ptr() for b in model.buffers()}
        self.storages: dict[int, int] = {}
        self.square: dict[int, int] = {}  # the T x T attention probabilities
        self.counting = False
        self.most = (0, 0)  # (saved, of which T x T attention probabilities)

    def start(self, *_):
        self.storages, self.square, self.counting = {}, {}, True

    def stop(self, *_):
        """Counts what is still held when the forward ends: a tensor packed by a node that is already gone (a
        checkpointed layer that needs no gradient, as the frozen CLIP's) is not."""
        self.counting = False
        alive = {
            pointer: nbytes for pointer, (refs, nbytes) in self.storages.items() if any(r() is not None for r in refs)
        }
        square = sum(nbytes for pointer, nbytes in self.square.items() if pointer in alive)
        self.most = max(self.most, (sum(alive.values()), square))

    def pack(self, tensor):
        if self.counting:
            storage = tensor.untyped_storage()
            pointer = storage.data_ptr()
            if pointer not in self.exclude:
                refs, _ = self.storages.setdefault(pointer, ([], storage.nbytes()))
                refs.append(weakref.ref(tensor))
                if tensor.dim() >= 3 and tensor.shape[-1] == tensor.shape[-2] and tensor.shape[-1] > 64:
                    self.square[pointer] = storage.nbytes()
        return tensor


MARK = 7_777_777  # bytes of a tensor made and freed as the first step begins: the steps' start in the events


def peaks_of(profiler) -> tuple[int, int | None]:
    """The most bytes allocated at once during the profiled span above what was allocated at its start, and the most
    from the first step's start on above what was allocated then (the steps, without the loading and FSDP's sharding
    before them; None without the mark)."""
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    held = peak = 0
    at_mark = step_peak = None
    for _, nbytes in events:
        if at_mark is None and nbytes == MARK:
            at_mark = step_peak = held
        held += nbytes
        peak = max(peak, held)
        if at_mark is not None:
            step_peak = max(step_peak, held)
    return peak, None if at_mark is None else step_peak - at_mark


def local_bytes(tensors) -> int:
    """Bytes this process holds of ``tensors``: an FSDP shard's local part; nothing for a tensor on the meta device
    (FSDP's loading leaves the model there on every process but the first)."""
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += 0 if t.is_meta else t.numel() * t.element_size()
    return total


def measure(recipe_path: Path, model: str, batch: int, every: int | None, overrides: dict | None = None) -> dict:
    """One step of the recipe on ``model`` at ``batch`` rows, its memory by part (bytes) and its batch's shape;
    ``overrides``: recipe keys set over the recipe's."""
    import torch
    import yaml
    from transformers import TrainerCallback

    from ..config import parse_recipe
    from ..loss import fused_head_at_labelled_positions as labelled_positions
    from ..train import build_trainer, load_processor, read_data

    scratch = Path(tempfile.mkdtemp(prefix="step-memory-"))
    recipe = step_overrides(recipe_path, model, batch, str(scratch / "run"), every) | (overrides or {})
    (scratch / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    recipe, args, model_args = parse_recipe(["--config", str(scratch / "recipe.yaml")])
    processor = load_processor(model_args, recipe)
    data = read_data(recipe, processor, args)
    trainer = build_trainer(model_args, recipe, args, processor, data)
    shapes = {}
    collate = trainer.data_collator

    def recording(rows):
        batch_ = collate(rows)
        if not shapes and "labels" in batch_:  # an SFT batch (GRPO's rows are prompts, DPO's pairs)
            labels = batch_["labels"]
            pixels = next(v for k, v in batch_.items() if "pixel_values" in k)
            shapes.update(
                rows=int(labels.shape[0]),
                tokens=int(labels.shape[1]),
                answer=int((labels != -100).sum()) / labels.shape[0],
                crops=int(pixels.shape[0] * pixels.shape[1]) / labels.shape[0] if pixels.dim() == 5 else None,
            )
        return batch_

    trainer.data_collator = recording
    model_ = trainer.model
    saved = SavedBytes(model_)
    forward_done = model_.register_forward_hook(saved.stop)
    forward_start = model_.register_forward_pre_hook(saved.start)
    marked = []  # the bytes of the model's parameters and buffers (this process's shards) as the first step begins

    class Mark(TrainerCallback):
        def on_step_begin(self, *_, **__):
            if not marked:
                wrapped = trainer.model_wrapped
                marked.append(local_bytes(wrapped.parameters()) + local_bytes(wrapped.buffers()))
                torch.empty(MARK, dtype=torch.uint8)  # made and freed: the mark in the allocator's events

    trainer.add_callback(Mark())
    frozen = local_bytes(p for p in model_.parameters() if not p.requires_grad) + local_bytes(model_.buffers())
    before = local_bytes(p for p in model_.parameters() if p.requires_grad)
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as profiler:
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda tensor: tensor), labelled_positions():
            trainer.train()
    forward_done.remove(), forward_start.remove()
    model_ = trainer.model_wrapped if trainer.is_fsdp_enabled else model_  # FSDP shards the model it wraps
    optimiser = local_bytes(
        t for state in trainer.optimizer.state.values() for t in state.values() if torch.is_tensor(t) and t.dim() > 0
    )
    trained = [p for p in model_.parameters() if p.requires_grad]
    total, square = saved.most
    peak, step_rise = peaks_of(profiler)
    return {
        "recipe": recipe_path.stem,
        "batch_size": batch,
        "every": every,
        **shapes,
        "processes": trainer.accelerator.num_processes,
        "trainable_params": sum(p.numel() for p in trained),
        "weights": local_bytes(p for p in model_.parameters() if not p.requires_grad) + local_bytes(model_.buffers()),
        "trainable": local_bytes(trained) * 2 + optimiser,  # the parameters, their gradients, AdamW's moments
        "saved": total - square,
        "saved_attention_probs": square,
        "peak": frozen + before + peak,
        "step_peak": marked[0] + step_rise,  # from the first step's start on
    }


def main(argv=None) -> dict:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--model", required=True, help="a full-size checkpoint (phi3v-recipe tiny DIR --size full)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--every", type=int, default=1, help="checkpoint every N-th decoder layer (1: all)")
    parser.add_argument("--no_checkpointing", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe keys over the recipe's")
    args = parser.parse_args(argv)
    import yaml

    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    result = measure(args.config, args.model, args.batch, None if args.no_checkpointing else args.every, overrides)
    print(json.dumps(result))
    if args.out:  # under several processes (FSDP), one file each: OUT.rank1.json beside OUT
        rank = int(os.environ.get("RANK", "0"))
        (args.out.with_suffix(f".rank{rank}{args.out.suffix}") if rank else args.out).write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    run(main)
