"""What a user takes away loads where they take it: the hub's own code (transformers 4.4x with the PEFT of that era),
vLLM, and plain transformers.

- A merged model is the base's hub folder with new weights: its config.json, tokenizer and processor files and remote
  code files (``*.py``) are the base's own, byte for byte (a changed crop setting is the one field rewritten).
- A trained adapter carries the base's tokenizer and processor files as they were (tokenizers of 2024 cannot read a
  tokenizer.json re-saved by today's), and an adapter_config.json that PEFT 0.11-0.13 read: they build
  ``LoraConfig(**file)``, so a key they do not know is an error unless it is left out, which only a key at today's
  default may be.
"""

import dataclasses
import json
import shutil
from pathlib import Path

# Files of a Phi-3-Vision hub folder besides the weights and config.json.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "chat_template.jinja", "chat_template.json")
# The fields of LoraConfig (with PeftConfig's) in PEFT 0.11.1, read from its source; 0.12 and 0.13 add runtime_config.
PEFT_0_11_KEYS = {
    "alpha_pattern", "auto_mapping", "base_model_name_or_path", "bias", "fan_in_fan_out", "inference_mode",
    "init_lora_weights", "layer_replication", "layers_pattern", "layers_to_transform", "loftq_config", "lora_alpha",
    "lora_dropout", "megatron_config", "megatron_core", "modules_to_save", "peft_type", "r", "rank_pattern",
    "revision", "target_modules", "task_type", "use_dora", "use_rslora",
}  # fmt: skip


INDEX = "model.safetensors.index.json"


def save_in_shards(tensor_of, weight_map: dict[str, str], out: Path, progress=None) -> int:
    """Write each tensor (``tensor_of(name)``) into the safetensors file ``weight_map`` names for it, shard by shard
    (only one shard's tensors made at a time), with the index when there are several; the bytes written.
    ``progress(nbytes)`` is told after each shard."""
    from safetensors.torch import save_file

    total, shards = 0, sorted(set(weight_map.values()))
    for shard in shards:
        part = {name: tensor_of(name).contiguous() for name in weight_map if weight_map[name] == shard}
        save_file(part, out / shard, metadata={"format": "pt"})
        size = sum(t.numel() * t.element_size() for t in part.values())
        total += size
        if progress is not None:
            progress(size)
        del part
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return total


def base_weight_map(base_dir: Path, names) -> dict[str, str] | None:
    """The base's own shard of each tensor (its index's weight_map) when it is sharded and names exactly these
    tensors; else None."""
    index = base_dir / INDEX
    if not index.is_file():
        return None
    weight_map = json.loads(index.read_text())["weight_map"]
    return weight_map if set(weight_map) == set(names) else None


def copy_base_files(base_dir: Path, out: Path, crops: tuple[str, int] | None, with_model_files: bool) -> None:
    """Copy the base's tokenizer and processor files into ``out`` (and, ``with_model_files``, its config.json,
    generation_config.json and remote code, leaving no other file than the weights) over what was saved there.
    ``crops`` is the crop setting trained with (``("num_crops", 4)``), written over the base's if it differs."""
    names = [*TOKENIZER_FILES, *PROCESSOR_FILES]
    if with_model_files:
        names += ["config.json", "generation_config.json", *(p.name for p in base_dir.glob("*.py"))]
        # and nothing of ours beside them: transformers 4.4x reads a processor_config.json first
        weights = {p.name for p in out.glob("*.safetensors")} | {"model.safetensors.index.json"}
        for extra in out.iterdir():
            if extra.is_file() and extra.name not in weights and not (base_dir / extra.name).is_file():
                extra.unlink()
    for name in names:
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, out / name)
    if crops is not None:
        write_crop_setting(base_dir, out, *crops)


def write_crop_setting(base_dir: Path, out: Path, key: str, value: int) -> None:
    """Trained at another crop setting than the base's: the one field that must change, in the file that holds the
    image settings (preprocessor_config.json, or the image_processor part of transformers 5's processor_config.json)."""
    for name in ("preprocessor_config.json", "processor_config.json"):
        if not (base_dir / name).is_file():
            continue
        settings = json.loads((base_dir / name).read_text())
        image = settings if name == "preprocessor_config.json" else settings.get("image_processor")
        if image is None:
            continue
        if image.get(key) != value:
            image[key] = value
            (out / name).write_text(json.dumps(settings, indent=2) + "\n")
        return


def local_folder(name_or_path: str, revision: str | None = None) -> Path | None:
    """The folder a model was loaded from: itself, or its snapshot in the local Hub cache (None if not there)."""
    from huggingface_hub import snapshot_download

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    try:
        return Path(snapshot_download(name_or_path, revision=revision, local_files_only=True))
    except Exception:  # not cached whole: the saved files stay as transformers wrote them
        return None


def what_it_loads_in(base_dir: Path) -> str:
    """One line on where a merged folder of this base loads."""
    if list(base_dir.glob("*.py")) and json.loads((base_dir / "config.json").read_text()).get("auto_map"):
        return (
            "It loads as the base does: in transformers 5 with `import phi3v_recipe`, in the hub's own code "
            "(trust_remote_code=True, transformers 4.4x) and in vLLM (--trust-remote-code)."
        )
    return (
        f"The base ({base_dir}) has no remote code files (no auto_map): the merged folder loads in transformers 5 with "
        "`import phi3v_recipe`, not in the hub's own code nor in vLLM. Merge onto a hub checkpoint for those."
    )


def for_older_peft(adapter_dir: Path) -> list[str]:
    """Rewrite adapter_config.json without the keys PEFT 0.11 does not know whose value is today's default (so today's
    PEFT reads the same config); returns the unknown keys that had to stay (a non-default setting), which old PEFT
    will refuse."""
    from peft import LoraConfig

    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    defaults = {f.name: f.default for f in dataclasses.fields(LoraConfig) if f.default is not dataclasses.MISSING}
    defaults |= {
        f.name: f.default_factory()
        for f in dataclasses.fields(LoraConfig)
        if f.default_factory is not dataclasses.MISSING
    }
    defaults["peft_version"] = config.get("peft_version")  # a record of the writer's version (the model card has it)
    kept = {}
    for key, value in config.items():
        default = defaults.get(key, dataclasses.MISSING)
        if dataclasses.is_dataclass(default):
            default = dataclasses.asdict(default)
        if key in PEFT_0_11_KEYS or default is dataclasses.MISSING or value != default:
            kept[key] = value
    path.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n")
    return sorted(set(kept) - PEFT_0_11_KEYS)
