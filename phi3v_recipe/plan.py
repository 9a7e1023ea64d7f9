"""Plan before you rent: whether a recipe's training step fits a GPU, and how long its rows take, before anything
heavy is loaded (no weights, no pixels: image sizes come from file headers).

    phi3v-recipe plan --config recipes/burberry_lora.yaml [--gpu H100] [--num_gpus 1] [--json] [--key value ...]

It reads the recipe's rows (its synthetic twin's where the real set is not on this machine, said so) and counts
their tokens with the processor's size-only counts; estimates the memory of a step per GPU by part
(``phi3v_recipe.memory``, checked against full-size steps counted on the CPU) for the longest batch the
length-grouped sampler makes; and the FLOPs per row (``phi3v_recipe.flops``) and the time per 1,000 rows on the
named GPU at an MFU range. When the step does not fit it lists the nearest settings that do.
"""

import contextlib
import dataclasses
import difflib
import itertools
import json
import statistics
import sys
from pathlib import Path

from .errors import ArgumentParser, UserError, run

GIB = 2**30
# Dense bf16 tensor-core FLOP/s (NVIDIA's datasheets; their "with sparsity" figures halved) and the memory the GPU
# shows (nvidia-smi's total, MiB), per GPU kind.
GPUS = {
    "H100": (989e12, 81559),  # H100 SXM5 80GB
    "H200": (989e12, 143771),  # H200 SXM 141GB
    "A100-80GB": (312e12, 81920),
    "A100-40GB": (312e12, 40960),
    "L40S": (362e12, 46068),
    "L4": (121e12, 23034),
    "RTX4090": (82.6e12, 24564),  # bf16 with fp32 accumulation, as PyTorch's matmuls run (Ada whitepaper)
}
MFU = (0.30, 0.50)  # the model-FLOPs utilisation a time is given for: assumed, not measured (no GPU run of ours yet)
SIZES_GB = (16, 24, 40, 48, 80, 141)  # the memory sizes GPUs are sold in: the recipes' hardware lines


@dataclasses.dataclass(frozen=True)
class Setting:
    """One way to run the step: the knobs the alternatives turn."""

    batch: int
    every: int | None  # checkpoint every n-th decoder layer; None: off
    crops: int
    quantized: bool
    gpus: int

    def describe(self, crop_key: str) -> str:
        policy = {None: "off", 1: "all layers"}.get(self.every, f"every {self.every} layers")
        parts = [f"batch {self.batch}", f"checkpointing {policy}", f"{crop_key} {self.crops}"]
        return ", ".join(parts + (["4-bit base"] if self.quantized else []) + [f"{self.gpus} GPU(s)"])


@dataclasses.dataclass(frozen=True)
class Stage:
    """What a step of the recipe's stage holds beyond SFT's: ``sequences`` per row (DPO: chosen and rejected) and
    the rows generated at once per row of the batch (GRPO: ``steps_per_generation``; their KV cache)."""

    name: str
    sequences: int = 1
    generated: int = 0
    groups: int = 1  # a batch's generation rows come in groups of num_generations
    rank: int | None = None  # the SFT adapter's LoRA rank when it is trained on (``sft_adapter``)

    @classmethod
    def of(cls, recipe, args) -> "Stage":
        rank = adapter_rank(recipe.sft_adapter)
        if recipe.stage == "dpo":
            return cls(recipe.stage, sequences=2, rank=rank)
        if recipe.stage == "grpo":
            generated = args.steps_per_generation or args.gradient_accumulation_steps
            return cls(recipe.stage, generated=generated, groups=args.num_generations, rank=rank)
        return cls(recipe.stage)

    def allows(self, batch: int) -> bool:
        """Whether TRL takes this per-GPU batch: GRPO's generation batch is whole groups of completions."""
        return batch * max(self.generated, 1) % self.groups == 0


def rank_note(recipe, stage: Stage, rank: int) -> str:
    """Where the LoRA rank comes from, when an SFT adapter is trained on."""
    if recipe.sft_adapter is None:
        return ""
    if stage.rank is not None:
        return f" (the SFT adapter's, rank {rank})"
    return (
        f" (rank {rank}: lora_r stands in for the rank of the SFT adapter {recipe.sft_adapter}, not on this machine)"
    )


def adapter_rank(adapter) -> int | None:
    """The LoRA rank of an SFT adapter folder on this machine (None: no adapter, or not here: the recipe's lora_r
    stands in)."""
    config = Path(str(adapter)).expanduser() / "adapter_config.json" if adapter else None
    return json.loads(config.read_text())["r"] if config is not None and config.is_file() else None


@dataclasses.dataclass
class Rows:
    """The rows' sizes at the recipe's crop setting, and what is needed to recount them at another."""

    lengths: list[int]
    answers: list[int]
    image_sizes: list[list[tuple[int, int]]]
    source: str
    train_rows: int  # the rows an epoch trains on (the eval split's are read too, for their lengths)


def parse(argv: list[str]):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", default="H100", help=f"the GPU kind: {', '.join(GPUS)}")
    parser.add_argument("--num_gpus", type=int, default=1, help="GPUs the run spreads over (DDP, or FSDP shards)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    own, rest = parser.parse_known_args(argv)
    own.gpu = gpu_name(own.gpu)
    if own.num_gpus < 1:
        raise UserError(f"--num_gpus must be at least 1, got {own.num_gpus}.")
    from .recipe_file import config_path, precheck

    if config_path(rest) is None:
        raise UserError(
            "say which recipe: phi3v-recipe plan --config recipes/NAME.yaml [--gpu H100] [--key value ...]"
        )
    precheck(rest, also=("gpu", "num_gpus", "json"))
    return own, rest


def gpu_name(name: str) -> str:
    by_key = {key.lower().replace("-", ""): key for key in GPUS}
    found = by_key.get(name.lower().replace("-", "").replace(" ", ""))
    if found is None:
        close = difflib.get_close_matches(name.upper(), GPUS, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise UserError(f"unknown GPU {name!r}.{hint} Known: {', '.join(GPUS)}.")
    return found


def local_model(model_args) -> Path | None:
    """The model's folder on this machine: a folder given, or the Hugging Face cache's snapshot; else None."""
    path = Path(model_args.model_name_or_path).expanduser()
    if (path / "config.json").is_file():
        return path
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model_args.model_name_or_path, "config.json", revision=model_args.model_revision)
    return Path(cached).parent if isinstance(cached, str) else None


def model_config(family, folder: Path | None):
    """The model's config: its own where it is here, else the family's real-size defaults."""
    if folder is not None:
        from transformers import AutoConfig

        from . import register

        register()
        return AutoConfig.from_pretrained(folder)
    if family.NAME == "phi3v":
        from .phi3_v import Phi3VConfig

        return Phi3VConfig()  # its defaults are the hub config.json's values
    from transformers import Phi4MultimodalConfig

    return Phi4MultimodalConfig()  # transformers' defaults: the pinned revision's values


def processor_for(family, folder: Path | None, crops: int | None):
    """(processor, note): the model's own, else the family's tiny model's (same image-token counts; its small
    trained tokenizer counts text tokens differently from the real one)."""
    if folder is not None and any(folder.glob("*token*")):
        return family.load_processor(folder, None, crops), "the model's own processor"
    tiny = Path("outputs") / f"tiny-{family.NAME}"
    if not (tiny / "config.json").is_file():
        raise UserError(
            f"Neither the model nor {tiny} is on this machine: make the tiny model (make tiny) for its processor."
        )
    note = f"image tokens exact; text tokens by {tiny}'s tokenizer (the real one is not here: approximate)"
    return family.load_processor(tiny, None, crops), note


def data_recipe(recipe, recipe_path: Path):
    """(recipe, source note): the recipe itself when its data is on this machine, else with its synthetic twin's
    data keys (``smoke.TWINS``)."""
    from .arguments import DataArguments
    from .smoke import twin_data

    if recipe.dataset and Path(recipe.dataset).expanduser().exists():
        return recipe, f"the recipe's rows ({recipe.dataset})"
    found = twin_data(recipe_path)
    if found is None:
        raise UserError(
            f"{recipe.dataset!r} is not on this machine and {recipe_path} has no synthetic twin: give --dataset a local "
            "copy (a CSV, an image folder or a saved dataset) to plan on its rows."
        )
    twin, keys = found
    data = {  # every data key the twin's (or its default): none of the real source's keys stays
        f.name: keys.get(f.name, f.default if f.default_factory is dataclasses.MISSING else f.default_factory())
        for f in dataclasses.fields(DataArguments)
    }
    data["max_frames"] = recipe.max_frames  # frames a video becomes: the recipe's, not the quick twin's
    return dataclasses.replace(recipe, **data), (
        f"the synthetic twin {twin}'s rows ({recipe.dataset} is not on this machine: its token counts stand in)"
    )


def read_rows(recipe, processor, max_length, source: str) -> Rows:
    from .data import prepare_data

    data = prepare_data(recipe, processor, max_length, None)
    rows = data.train.to_list() + ([] if data.eval is None else data.eval.to_list())
    answers = [sum(answer_tokens(processor, m) for m in row["messages"][1::2]) for row in rows]
    sizes = [header_sizes(row["images"]) for row in rows]
    return Rows([row["length"] for row in rows], answers, sizes, source, len(data.train))


def read_pair_rows(recipe, processor, source: str) -> Rows:
    """A pairs file's rows (``stage: dpo``), each at its prompt and longer answer: DPO trains on both."""
    import datasets

    from .conversation import conversation_length
    from .pairs import read_pairs

    data = read_pairs(recipe)
    lengths, answers, sizes = [], [], []
    for split in (data.train, data.eval):
        if split is None:
            continue
        for row in split.cast_column("images", datasets.Sequence(datasets.Image(decode=False))):
            row_sizes = header_sizes([image["path"] for image in row["images"]])
            turns = [row["chosen"], row["rejected"]]
            sizes.append(row_sizes)
            lengths.append(max(conversation_length(processor, row["prompt"] + turn, row_sizes) for turn in turns))
            answers.append(max(answer_tokens(processor, turn[0]) for turn in turns))
    return Rows(lengths, answers, sizes, source, len(data.train))


def header_sizes(paths: list[str]) -> list[tuple[int, int]]:
    """Each image's (width, height), from its file header only: no pixels are decoded."""
    from PIL import Image

    sizes = []
    for path in paths:
        with Image.open(path) as image:
            sizes.append(image.size)
    return sizes


def answer_tokens(processor, message: dict) -> int:
    """Tokens of an assistant turn, with its <|end|> and the closing token."""
    from .conversation import text_of

    return len(processor.tokenizer(text_of(message), add_special_tokens=False).input_ids) + 2


def image_tokens(image_processor, size: tuple[int, int], crops: int) -> int:
    return image_processor.num_image_tokens(*size, crops)


def crop_count(image_processor, size: tuple[int, int], crops: int) -> int:
    """Crops through the vision tower for one image: its sub-crops and the global view."""
    if hasattr(image_processor, "layout"):  # Phi-4-multimodal
        cols, rows, *_ = image_processor.layout(*size, crops)
    else:
        from .phi3_v.image_processing_phi3_v import hd_grid

        *_, rows, cols = hd_grid(*size, crops)
    return rows * cols + 1


def largest_image(image_processor, crops: int) -> tuple[int, int]:
    """The image size that costs the most tokens at ``crops``: a large photo of the worst aspect ratio."""
    shapes = [(4032, round(4032 * ratio / 8)) for ratio in range(1, 49)] + [
        (round(4032 * r / 8), 4032) for r in range(1, 9)
    ]
    return max(shapes, key=lambda size: image_tokens(image_processor, size, crops))


def at_crops(
    rows: Rows, image_processor, base: int, crops: int, largest: bool = False
) -> tuple[list[int], list[int], list[int]]:
    """Per row at ``crops``: tokens, image tokens and vision crops, recounted from the image sizes (``largest``:
    as if every image were the one that costs the most tokens, the longest row a real set can hold)."""
    lengths, images, vision = [], [], []
    biggest = largest_image(image_processor, crops) if largest else None
    for length, sizes in zip(rows.lengths, rows.image_sizes):
        now = sum(image_tokens(image_processor, s, base) for s in sizes)
        if largest:
            sizes = [biggest] * len(sizes)
        new = sum(image_tokens(image_processor, s, crops) for s in sizes)
        lengths.append(length - now + new)
        images.append(new)
        vision.append(sum(crop_count(image_processor, s, crops) for s in sizes))
    return lengths, images, vision


def grouped(lengths: list[int], batch: int) -> list[list[int]]:
    """The batches ``train_sampling_strategy: group_by_length`` makes (transformers' own sampler)."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    order = list(LengthGroupedSampler(batch, lengths=lengths, generator=torch.Generator().manual_seed(0)))
    return [order[i : i + batch] for i in range(0, len(order), batch)]


class Planner:
    """Memory and time of a setting, for the recipe's rows and model."""

    def __init__(
        self, family, config, rows: Rows, image_processor, model_args, base: Setting, full: bool, stage=Stage("sft"),
        tower_frozen: bool = True,
    ):  # fmt: skip
        from .memory import shape_of

        self.family, self.config, self.rows, self.image_processor = family, config, rows, image_processor
        self.model_args, self.base, self.full, self.stage = model_args, base, full, stage
        self.tower_frozen = tower_frozen  # under full fine-tuning: the recipe's freeze_vision_tower
        self.shape = shape_of(config)
        self.rank = family.VISION_LORA_RANK if family.NAME == "phi4mm" else stage.rank or model_args.lora_r
        self.trained_whole = self.shape.vision_params - self.shape.vision_unused if family.NAME == "phi4mm" else 0
        self._counts = {}

    def counts(self, crops: int, largest: bool = False):
        if (crops, largest) not in self._counts:
            self._counts[crops, largest] = at_crops(self.rows, self.image_processor, self.base.crops, crops, largest)
        return self._counts[crops, largest]

    def evaluate(self, setting: Setting, gpu: str, largest: bool = False) -> dict:
        """Memory and time of ``setting`` on ``gpu`` for these rows (``largest``: with every image at its most
        tokens)."""
        from .memory import generation_memory, step_memory

        lengths, images, vision = self.counts(setting.crops, largest)
        batches = grouped(lengths, setting.batch)
        worst = max(batches, key=lambda b: max(lengths[i] for i in b))
        padded = [max(lengths[i] for i in b) for b in batches for _ in b]
        longest = max(lengths[i] for i in worst)
        parts = step_memory(
            self.shape,
            batch=len(worst) * self.stage.sequences,
            tokens=longest,
            answer=max(self.rows.answers[i] for i in worst),
            crops=max(vision[i] for i in worst),
            every=setting.every,
            rank=self.rank,
            trained_whole=self.trained_whole,
            quantized=setting.quantized,
            full=self.full,
            tower_frozen=self.tower_frozen,
            gpus=setting.gpus if self.full else 1,
            dropout=self.model_args.lora_dropout,
            generation=generation_memory(self.shape, setting.batch * self.stage.generated, longest),
            reference=self.stage.name == "dpo",
        )
        n = len(lengths)
        flops = self.stage.sequences * self.flops_per_row(setting, padded, images, vision)
        peak, shown = GPUS[gpu][0], GPUS[gpu][1] * 2**20
        minutes = [1000 * flops / (setting.gpus * peak * mfu) / 60 for mfu in reversed(MFU)]
        return {
            "setting": dataclasses.asdict(setting),
            "memory_gib": {k: round(v / GIB, 2) for k, v in parts.items()},
            "fits": parts["total"] <= shown,
            "gpu_memory_gib": round(shown / GIB, 1),
            "padding": round(1 - sum(lengths) / sum(padded), 4),
            "longest_batch": {"rows": len(worst) * self.stage.sequences, "tokens": longest},
            "tflop_per_row": round(flops / 1e12, 2),
            "minutes_per_1000_rows": [round(m, 1) for m in minutes],
            "rows": n,
        }

    def flops_per_row(self, setting: Setting, padded: list[int], images: list[int], vision: list[int]) -> float:
        from .flops import decoder_flops, mode_flops, model_shapes

        n = len(padded)
        tokens, tokens_sq = sum(padded) / n, sum(t * t for t in padded) / n
        answer, image, crops = sum(self.rows.answers) / n, sum(images) / n, sum(vision) / n
        layers = self.shape.layers
        share = 0.0 if setting.every is None else len(range(0, layers, setting.every)) / layers
        if self.family.NAME == "phi3v":
            shapes = model_shapes(self.config)
            return mode_flops(
                shapes, "ours", tokens, tokens_sq, answer, crops, image, checkpointed=share, full=self.full
            )["total"]
        return decoder_flops(self.shape, tokens, tokens_sq, answer, crops, self.rank, share, vision_trains=True)[
            "total"
        ]


def alternatives(planner: Planner, base: Setting, gpu: str, full: bool, crop_steps: tuple[int, ...]) -> list[dict]:
    """The settings nearest to ``base`` that fit: the cheapest changes first (see ``cost``), then the fastest."""
    batches = sorted({base.batch, *[b for b in (1, 2, 4) if b < base.batch]}, reverse=True)
    policies = [base.every] + [e for e in (2, 1) if base.every is None or (e < base.every)]
    crops = [base.crops] + [c for c in crop_steps if c < base.crops]
    quantized = [base.quantized] + ([True] if not base.quantized and not full else [])
    gpus = [base.gpus] + ([g for g in (2, 4, 8, 16) if g > base.gpus] if full else [])
    found = []
    for batch, every, crop, quant, count in itertools.product(batches, policies, crops, quantized, gpus):
        setting = Setting(batch, every, crop, quant, count)
        if setting == base or not planner.stage.allows(setting.batch):
            continue
        result = planner.evaluate(setting, gpu)
        if result["fits"]:
            # What a change costs: checkpointing and smaller batches (gradient accumulation keeps the effective
            # batch) only time; more GPUs money; a 4-bit base some accuracy; fewer crops the image detail.
            cost = (setting.every != base.every) + (setting.batch != base.batch) + (setting.gpus != base.gpus)
            cost += 2 * (setting.quantized != base.quantized) + 3 * (setting.crops != base.crops)
            found.append((cost, result["minutes_per_1000_rows"][0], result))
    found.sort(key=lambda item: item[:2])
    return [result for *_, result in found[:4]]


def make_plan(argv: list[str]) -> dict:
    own, rest = parse(argv)
    from .config import parse_recipe
    from .families import BY_NAME, FAMILIES, crops_of
    from .recipe_file import config_path

    recipe_path = Path(config_path(rest))
    # Nothing trains here: the GPU-only checks of the training arguments (bf16 needs a GPU) are not the plan's.
    recipe, args, model_args = parse_recipe([*rest, "--use_cpu", "true", "--bf16", "false"])
    family = next((f for f in FAMILIES.values() if getattr(recipe, f.CROP_KEY) is not None), BY_NAME["phi3v"])
    crops = crops_of(family, recipe)
    folder = local_model(model_args)
    config = model_config(family, folder)
    processor, tokens_note = processor_for(family, folder, crops)
    crops = crops or family.crop_setting(processor)[1]
    if recipe.stage == "dpo":
        if not Path(recipe.dataset).expanduser().exists():
            raise UserError(f"{recipe.dataset!r} is not on this machine: give --dataset a pairs file to plan on it.")
        rows = read_pair_rows(recipe, processor, f"the recipe's pairs ({recipe.dataset})")
    else:
        data_args, source = data_recipe(recipe, recipe_path)
        max_length = None if recipe.stage == "grpo" else getattr(args, "max_length", None)
        rows = read_rows(data_args, processor, max_length, source)
        if recipe.stage == "grpo":  # each row's prompt, answered by max_completion_length tokens
            completion = args.max_completion_length
            rows.lengths = [n - a + completion for n, a in zip(rows.lengths, rows.answers)]
            rows.answers = [completion] * len(rows.answers)
    if not rows.lengths:
        raise UserError(f"{rows.source}: no rows left after the checks; nothing to plan.")
    kwargs = dict(args.activation_checkpointing_kwargs or {})
    every = kwargs.get("every_n_layers", 1) if args.activation_checkpointing else None
    full = not model_args.use_peft and recipe.sft_adapter is None  # an SFT adapter trains on as LoRA
    base = Setting(args.per_device_train_batch_size, every, crops, bool(model_args.load_in_4bit), own.num_gpus)
    stage = Stage.of(recipe, args)
    planner = Planner(
        family, config, rows, processor.image_processor, model_args, base, full, stage, recipe.freeze_vision_tower
    )
    result = planner.evaluate(base, own.gpu)
    lengths = sorted(rows.lengths)
    plan = {
        "recipe": str(recipe_path),
        "family": family.NAME,
        "model": model_args.model_name_or_path,
        "model_here": folder is not None,
        "params": planner.shape.params,
        "gpu": own.gpu,
        "num_gpus": own.num_gpus,
        "crop_key": family.CROP_KEY,
        "rows_from": rows.source,
        "tokens_note": tokens_note,
        "row_tokens": {
            "min": lengths[0],
            "median": statistics.median(lengths),
            "p95": lengths[min(len(lengths) - 1, round(0.95 * (len(lengths) - 1)))],
            "max": lengths[-1],
        },
        "answer_tokens_median": statistics.median(rows.answers),
        "stage": dataclasses.asdict(stage),
        "training": ("full fine-tuning" + (" sharded with FSDP" if own.num_gpus > 1 else ""))
        if full
        else ("QLoRA" if base.quantized else "LoRA") + rank_note(recipe, stage, planner.rank),
        "mfu": MFU,
        "plan": result,
        "hardware": hardware_line(planner, base),
    }
    if rows.source.startswith("the recipe's"):  # the real set: its epoch, at the recipe's epochs
        plan["epoch_minutes"] = [round(m * rows.train_rows / 1000, 1) for m in result["minutes_per_1000_rows"]]
        plan["epochs"] = args.num_train_epochs
    crop_steps = (8, 4, 1) if family.NAME == "phi3v" else (16, 9, 4, 1)
    plan["alternatives"] = [] if result["fits"] else alternatives(planner, base, own.gpu, full, crop_steps)
    return plan


def hardware_line(planner: Planner, base: Setting) -> str:
    """The recipe table's hardware column: the GPUs and the smallest GPU size (GB) the step fits in, with every
    image at its most tokens (a twin's small images must not make the line smaller than a real set needs)."""
    need = planner.evaluate(base, "H200", largest=True)["memory_gib"]["total"] * GIB / 1e9
    size = next((s for s in SIZES_GB if s >= need), None)
    gpus = f"{base.gpus} GPUs" if base.gpus > 1 else "1 GPU"
    return f"{gpus}, {size} GB+" if size else f"{gpus}, more than {SIZES_GB[-1]} GB"


def count(params: int) -> str:
    return f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M"


STAGE_NOTES = {
    "grpo": (
        "  (GRPO: a row is a prompt with a completion of max_completion_length tokens; generation holds the KV cache",
        "  of batch x steps_per_generation rows before the training passes, whose activations it does not meet)",
    ),
    "dpo": ("  (DPO: each pair is two rows, chosen and rejected, at the longer answer)",),
}
TIME_NOTES = {
    "grpo": " of the training passes (generation and the reference pass not counted)",
    "dpo": " of the chosen and rejected passes (the reference pass not counted)",
}


def render(plan: dict) -> str:
    r = plan["plan"]
    setting = Setting(**r["setting"])
    memory = r["memory_gib"]
    tokens = plan["row_tokens"]
    lines = [
        f"Plan: {plan['recipe']} on {plan['num_gpus']} x {plan['gpu']} ({r['gpu_memory_gib']} GiB each)",
        f"Model: {plan['model']} ({plan['family']}, {count(plan['params'])} parameters"
        + ("" if plan["model_here"] else ", not on this machine: shapes from its config's values")
        + f"); {plan['training']}",
        f"Rows: {r['rows']} from {plan['rows_from']}",
        f"  tokens per row at {plan['crop_key']} {setting.crops}: min {tokens['min']:,}, median {tokens['median']:,.0f}, "
        f"p95 {tokens['p95']:,}, max {tokens['max']:,}; answer tokens median {plan['answer_tokens_median']:.0f} "
        f"({plan['tokens_note']})",
        f"  length-grouped batches of {setting.batch} leave {r['padding']:.1%} padding",
        f"Memory per GPU (GiB) of the longest batch ({r['longest_batch']['rows']} x {r['longest_batch']['tokens']:,} "
        f"tokens), {setting.describe(plan['crop_key'])}:",
        "  "
        + " | ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in memory.items() if k != "total")
        + f" | total {memory['total']:.2f}",
        "  (margin: the CUDA context, 0.5 GiB, and 10% for the allocator; phi3v_recipe/memory.py)",
        *STAGE_NOTES.get(plan["stage"]["name"], ()),
        f"FLOPs: {r['tflop_per_row']:.1f} TFLOP per row; 1,000 rows in {r['minutes_per_1000_rows'][0]:.1f}-"
        f"{r['minutes_per_1000_rows'][1]:.1f} min on {plan['num_gpus']} x {plan['gpu']} at "
        f"{plan['mfu'][1]:.0%}-{plan['mfu'][0]:.0%} MFU (assumed; no GPU run has measured it)"
        + TIME_NOTES.get(plan["stage"]["name"], ""),
        f"Verdict: {'fits' if r['fits'] else 'does not fit'} ({memory['total']:.1f} of {r['gpu_memory_gib']} GiB)",
    ]
    if "epoch_minutes" in plan:
        low, high = plan["epoch_minutes"]
        lines.insert(
            -1, f"  an epoch of these rows: {low:,.1f}-{high:,.1f} min; {plan['epochs']:g} epochs in the recipe"
        )
    if not r["fits"]:
        if plan["alternatives"]:
            lines.append("Nearest settings that fit:")
            for alt in plan["alternatives"]:
                described = Setting(**alt["setting"]).describe(plan["crop_key"])
                lines.append(
                    f"  {described}: {alt['memory_gib']['total']:.1f} GiB, 1,000 rows in "
                    f"{alt['minutes_per_1000_rows'][0]:.1f}-{alt['minutes_per_1000_rows'][1]:.1f} min"
                )
        else:
            lines.append("No nearby setting fits this GPU: try a larger one (--gpu H200).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    with contextlib.redirect_stdout(sys.stderr):  # the data's messages; stdout is the plan's (for --json)
        plan = make_plan(argv)
    print(json.dumps(plan, indent=2) if "--json" in argv else render(plan))
    return plan


if __name__ == "__main__":
    run(main)
