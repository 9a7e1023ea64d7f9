"""A random Phi-3-Vision checkpoint at the real size, in the hub's layout, offline, in about a minute.

    phi3v-recipe tiny OUT_DIR --size full --hub_dir ../shared/phi3v/hub/Phi-3-vision-128k-instruct [--seed 0]

Nothing can be downloaded here, yet the real size must be measured (memory, speed, merges, long rows): this writes
the model that the hub folder's ``config.json`` describes, with random bf16 weights, into the hub's files. The
parameter names and the shard split are the hub's: each tensor goes to the shard the hub's
``model.safetensors.index.json`` names when the folder has one (Phi-3-Vision's does), else shards of at most 5 GB in
the model's order. ``config.json`` and the tokenizer and processor files are copied byte for byte. The model is built
on the meta device (no memory, no init) and each tensor is filled once, shard by shard: normal(0, initializer_range)
for matrices and embeddings, 1 for norm weights, 0 for biases. Random weights answer nothing, but have the real shapes,
dtypes, memory and FLOPs.
"""

import json
import shutil
from pathlib import Path

from .errors import UserError
from .export import INDEX, save_in_shards
from .files import follow_umask

COPIED = (
    "config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
    "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "added_tokens.json",
)  # fmt: skip
MAX_SHARD_BYTES = 5 * 1000**3


def shard_plan(shapes: dict[str, tuple], index: dict | None, max_bytes: int = MAX_SHARD_BYTES) -> dict[str, str]:
    """tensor name -> shard file: the hub index's ``weight_map`` (which must name exactly these tensors), else
    consecutive shards of at most ``max_bytes`` (bf16) named as the hub names them."""
    if index is not None:
        weight_map = index["weight_map"]
        if set(weight_map) != set(shapes):
            missing, extra = sorted(set(shapes) - set(weight_map)), sorted(set(weight_map) - set(shapes))
            raise UserError(
                f"The hub index does not name this model's tensors (not in the index: {missing[:3]}; only in the "
                f"index: {extra[:3]}): give the config.json and index of the same model."
            )
        return dict(weight_map)
    groups, size = [[]], 0
    for name, shape in shapes.items():
        nbytes = 2 * _numel(shape)
        if groups[-1] and size + nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    total = len(groups)
    return {
        name: f"model-{i:05d}-of-{total:05d}.safetensors" if total > 1 else "model.safetensors"
        for i, group in enumerate(groups, start=1)
        for name in group
    }


def _numel(shape) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def fill(name: str, shape, std: float, generator):
    """A bf16 tensor for parameter ``name``: 1 for a norm's weight, 0 for a bias, else normal(0, std)."""
    import torch

    if len(shape) == 1 and "norm" in name and name.endswith("weight"):
        return torch.ones(shape, dtype=torch.bfloat16)
    if name.endswith("bias"):
        return torch.zeros(shape, dtype=torch.bfloat16)
    return torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, std, generator=generator)


def write_full_size(hub_dir: Path, out: Path, seed: int = 0, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Write the random checkpoint of ``hub_dir``'s model into ``out`` (see the module's docstring)."""
    from . import register
    from .phi3_v import Phi3VConfig, Phi3VForCausalLM

    register()
    if not (hub_dir / "config.json").is_file():
        raise UserError(f"--hub_dir {hub_dir} has no config.json: give the folder of a hub checkpoint's files.")
    index_file = hub_dir / INDEX
    index = json.loads(index_file.read_text()) if index_file.is_file() else None
    config = Phi3VConfig.from_pretrained(hub_dir)
    write_random(config, Phi3VForCausalLM, out, seed, index, max_shard_bytes, copy_from=hub_dir)
    return out


def write_random(config, model_class, out: Path, seed: int = 0, index: dict | None = None,
                 max_shard_bytes: int = MAX_SHARD_BYTES, copy_from: Path | None = None) -> int:  # fmt: skip
    """``config``'s model with random bf16 weights in ``out``, in ``index``'s shards (else by size), with the
    ``COPIED`` files of ``copy_from`` (else ``config.json`` written); returns the parameter count."""
    import torch
    from tqdm import tqdm

    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty: write the checkpoint into a new or empty folder.")
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in model_class(config).state_dict().items()}
    plan = shard_plan(shapes, index, max_shard_bytes)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    std = getattr(config, "initializer_range", 0.02)
    shards = sorted(set(plan.values()))
    ordered = {name: plan[name] for shard in shards for name in shapes if plan[name] == shard}  # filled in this order
    with tqdm(total=sum(2 * _numel(s) for s in shapes.values()), unit="B", unit_scale=True) as bar:
        bar.set_description("Writing random bf16 weights")
        total = save_in_shards(lambda name: fill(name, shapes[name], std, generator), ordered, out, bar.update)
    if copy_from is not None:
        for name in COPIED:
            if (copy_from / name).is_file():
                shutil.copyfile(copy_from / name, out / name)
    else:
        config.save_pretrained(out)  # its dtype: bf16, as the weights
    follow_umask(out)
    params = sum(map(_numel, shapes.values()))
    print(f"Wrote a random full-size {config.model_type} ({params:,} parameters, bf16, "
          f"{total / 1e9:.2f} GB in {len(shards)} shard(s)) to {out}")  # fmt: skip
    return params


def cut(model: Path, layers: int, out: Path) -> Path:
    """``model`` cut to its first ``layers`` decoder layers at full width, in ``out``: its config with
    ``num_hidden_layers`` changed, every other file a link to ``model``'s (loading skips the later layers' weights).
    For measuring a step whose whole model does not fit this machine."""
    out.mkdir(parents=True, exist_ok=True)
    for path in model.iterdir():
        if path.name != "config.json" and not (out / path.name).exists():
            (out / path.name).symlink_to(path.resolve())
    config = json.loads((model / "config.json").read_text())
    config["num_hidden_layers"] = layers  # both families keep the decoder's keys at the config's top
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out
