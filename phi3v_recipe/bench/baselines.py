"""The training modes the bench compares, each built as its users build it (see the package docstring)."""

import json
from pathlib import Path

from ..flops import FROZEN_VISION

MODES = [
    "official",
    "official-frozen",
    "official-frozen-bs1",
    "official-bs1",
    "official-frozen-bs1-nohead",
    "guide",
    "trl",
    "ours",
    "ours-ckpt-2",
    "ours-no-ckpt",
]
# The cookbook's LoRA modes at its scripts' per-device batch 1, with the batch reached by gradient accumulation (those with
# --freeze_vision_model, LoRA on the language model and lm_head only: FROZEN_VISION, in phi3v_recipe/flops.py).
PER_DEVICE_ONE = {"official-bs1", "official-frozen-bs1", "official-frozen-bs1-nohead"}
GUIDE_LENGTH = 512
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "burberry_lora.yaml"
# Phi-4-multimodal (python -m phi3v_recipe.bench.phi4mm): Microsoft's sample_finetune_vision.py restated, at its
# per-device batch 1 and at the batch measured, beside ours.
PHI4MM_MODES = ["phi4mm-sample", "phi4mm-sample-batched", "phi4mm-ours", "phi4mm-ours-shipped"]
PHI4MM_RECIPE = RECIPE.with_name("phi4mm_burberry_lora.yaml")


def ours_trainer(spec: dict):
    from ..config import parse_recipe
    from ..data import prepare_data
    from ..families import family_of
    from ..train import build_trainer

    cpu = spec["device"] == "cpu"
    family = family_of(spec["model_dir"])
    overrides = {
        "model_name_or_path": spec["model_dir"],
        "dataset": spec["csv"],
        "output_dir": spec["out"],
        "overwrite_output_dir": True,
        family.CROP_KEY: spec["num_crops"],
        "max_length": spec["max_length"],
        "per_device_train_batch_size": spec["batch_size"],
        "gradient_accumulation_steps": 1,
        "max_steps": spec["warmup"] + spec["steps"],
        "dataloader_num_workers": spec["workers"],
        "eval_fraction": 0,
        "eval_strategy": "no",
        "save_strategy": "no",
        "report_to": "none",
        "push_to_hub": False,
        "logging_steps": 100000,
        "disable_tqdm": True,
        "attn_implementation": spec["attn"],
        "seed": 0,
        "dtype": spec["dtype"],
        "bf16": spec["dtype"] == "bfloat16",
        "use_cpu": cpu,
    }
    if spec["mode"] == "phi4mm-ours-shipped":  # as the recipe ships: one row per device, the batch by accumulation
        overrides["per_device_train_batch_size"] = 1
        overrides["gradient_accumulation_steps"] = spec["batch_size"]
    if spec["mode"] == "ours-no-ckpt":
        overrides["activation_checkpointing"] = False
    if spec["mode"] == "ours-ckpt-2":  # every 2nd decoder layer checkpointed (transformers' every_n_layers)
        overrides["activation_checkpointing_kwargs"] = json.dumps({"use_reentrant": False, "every_n_layers": 2})
    argv = ["--config", str(PHI4MM_RECIPE if family.NAME == "phi4mm" else RECIPE)]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    recipe, args, model_args = parse_recipe(argv)
    recipe.image_url_column, recipe.image_column = None, "local_image_path"  # the local synthetic set
    processor = processor_for(spec)
    data = prepare_data(recipe, processor, args.max_length)
    return build_trainer(model_args, recipe, args, processor, data)


def processor_for(spec: dict):
    from ..families import family_of

    return family_of(spec["model_dir"]).load_processor(spec["model_dir"], crops=spec["num_crops"])


def load_model(spec: dict, auto_class=None):
    import torch
    from transformers import AutoModelForCausalLM

    return (auto_class or AutoModelForCausalLM).from_pretrained(
        spec["model_dir"], dtype=getattr(torch, spec["dtype"]), attn_implementation=spec["attn"]
    )


def training_arguments(spec: dict, **settings):
    from transformers import TrainingArguments

    cpu = spec["device"] == "cpu"
    common = {
        "output_dir": spec["out"],
        "max_steps": spec["warmup"] + spec["steps"],
        "per_device_train_batch_size": spec["batch_size"],
        "dataloader_num_workers": spec["workers"],
        "use_cpu": cpu,
        "bf16": spec["dtype"] == "bfloat16",
        "report_to": [],
        "save_strategy": "no",
        "logging_steps": 100000,
        "disable_tqdm": True,
        "remove_unused_columns": False,
        "seed": 0,
    }
    return TrainingArguments(**(common | settings))


# The optimiser settings of both Microsoft scripts restated here: the Phi-3 cookbook's and Phi-4's vision sample.
MICROSOFT_SETTINGS = {
    "optim": "adamw_torch",
    "learning_rate": 4e-5,
    "weight_decay": 0.01,
    "adam_beta1": 0.9,
    "adam_beta2": 0.95,
    "adam_epsilon": 1e-7,
    "max_grad_norm": 1.0,
    "lr_scheduler_type": "linear",
    "warmup_steps": 50,
    "gradient_checkpointing": True,
    "gradient_checkpointing_kwargs": {"use_reentrant": False},
}


def microsoft_arguments(spec: dict, one_row: bool, **settings):
    """A Microsoft script's TrainingArguments: one row per device step with the batch reached by gradient
    accumulation (``one_row``, the scripts' default), or the whole batch per step."""
    return training_arguments(
        spec | ({"batch_size": 1} if one_row else {}),
        gradient_accumulation_steps=spec["batch_size"] if one_row else 1,
        **MICROSOFT_SETTINGS,
        **settings,
    )


class OfficialDataset:
    """The cookbook's dataset: a row gives its decoded image, question and answer."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        from PIL import Image

        row = self.rows[i]
        with Image.open(row["image"]) as image:
            return {"image": image.convert("RGB"), "question": row["question"], "answer": row["answer"]}


class OfficialCollator:
    """The cookbook's training collator: the processor on each prompt and image, the answer tokenised after it
    (``{answer}<|end|>\\n<|endoftext|>``, no BOS), labels -100 on the prompt, right padding, pixel values
    concatenated."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, examples: list[dict]) -> dict:
        import torch
        from torch.nn.utils.rnn import pad_sequence

        tokenizer = self.processor.tokenizer
        ids, labels, pixels, sizes = [], [], [], []
        for example in examples:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": f"<|image_1|>\n{example['question']}"}],
                tokenize=False,
                add_generation_prompt=True,
            )
            batch = self.processor(prompt, [example["image"]], return_tensors="pt")
            answer = tokenizer(
                f"{example['answer']}<|end|>\n<|endoftext|>", add_special_tokens=False, return_tensors="pt"
            ).input_ids
            ids.append(torch.cat([batch["input_ids"], answer], 1)[0])
            labels.append(torch.cat([torch.full_like(batch["input_ids"], -100), answer], 1)[0])
            pixels.append(batch["pixel_values"])
            sizes.append(batch["image_sizes"])
        input_ids = pad_sequence(ids, batch_first=True, padding_value=tokenizer.pad_token_id)
        return {
            "input_ids": input_ids,
            "labels": pad_sequence(labels, batch_first=True, padding_value=-100),
            "attention_mask": input_ids.ne(tokenizer.pad_token_id),
            "pixel_values": torch.cat(pixels),
            "image_sizes": torch.cat(sizes),
        }


def official_lora_targets(model, freeze_vision_model: bool = False, head: bool = True) -> list[str]:
    """``create_lora_config``'s targets as module names: the decoder's qkv/o/gate_up/down and ``lm_head`` (``head``);
    unless ``--freeze_vision_model``, also CLIP's q/k/v/out_proj and fc1/fc2 in the layers that run (the cookbook
    deletes the others) and the image projection."""
    import torch

    embedding = model.model.vision_embed_tokens
    unused = {id(m) for module in embedding.unused_modules() for m in module.modules()}
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or id(module) in unused:
            continue
        leaf = name.rsplit(".", 1)[-1]
        in_vision = ".vision_embed_tokens." in f".{name}"
        if (name == "lm_head" and head) or (
            not in_vision and leaf in ("qkv_proj", "o_proj", "down_proj", "gate_up_proj")
        ):
            names.append(name)
        elif (
            in_vision
            and not freeze_vision_model
            and (leaf in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2") or "img_projection" in name)
        ):
            names.append(name)
    return names


def official_trainer(spec: dict):
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer

    processor = processor_for(spec)
    model = load_model(spec)
    lora = LoraConfig(
        r=64,
        lora_alpha=128,
        lora_dropout=0.0,
        target_modules=official_lora_targets(
            model, spec["mode"] in FROZEN_VISION, not spec["mode"].endswith("nohead")
        ),
        init_lora_weights="gaussian",
    )
    model = get_peft_model(model, lora)
    args = microsoft_arguments(spec, spec["mode"] in PER_DEVICE_ONE, ddp_find_unused_parameters=False)
    return Trainer(
        model=model,
        args=args,
        train_dataset=OfficialDataset(spec_rows(spec)),
        data_collator=OfficialCollator(processor),
    )


class GuideCollator:
    """The guide's batches: the chat text through the bare tokenizer (so ``<|image_1|>`` is plain text and the image
    never reaches the model), every row left-padded or cut to 512 tokens, labels = input_ids (prompt and padding
    trained)."""

    def __init__(self, processor):
        self.processor, self.tokenizer = processor, processor.tokenizer

    def __call__(self, rows: list[dict]) -> dict:
        texts = [
            self.tokenizer.apply_chat_template(
                [
                    {"role": "user", "content": f"<|image_1|>\n{row['question']}"},
                    {"role": "assistant", "content": row["answer"]},
                ],
                tokenize=False,
            )
            for row in rows
        ]
        self.tokenizer.padding_side = "left"
        batch = self.tokenizer(
            texts, padding="max_length", max_length=GUIDE_LENGTH, truncation=True, return_tensors="pt"
        )
        batch["labels"] = batch["input_ids"].clone()
        return dict(batch)


def guide_trainer(spec: dict):
    from transformers import Trainer

    processor = processor_for(spec)
    model = load_model(spec)  # full fine-tuning: every parameter trains
    args = training_arguments(spec | {"batch_size": 1})
    return Trainer(model=model, args=args, train_dataset=spec_rows(spec), data_collator=GuideCollator(processor))


def trl_trainer(spec: dict):
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText
    from trl import SFTConfig, SFTTrainer

    from ..families.phi3v import LORA_TARGETS

    rows = [{"images": [row["image"]], "messages": row["messages"]} for row in spec_rows(spec)]
    dataset = datasets.Dataset.from_list(rows).cast_column("images", datasets.List(datasets.Image()))
    cpu = spec["device"] == "cpu"
    args = SFTConfig(
        output_dir=spec["out"],
        max_steps=spec["warmup"] + spec["steps"],
        per_device_train_batch_size=spec["batch_size"],
        dataloader_num_workers=spec["workers"],
        max_length=None,  # TRL's default (1024) would cut image tokens at num_crops 16
        assistant_only_loss=True,
        use_cpu=cpu,
        bf16=spec["dtype"] == "bfloat16",
        report_to=[],
        save_strategy="no",
        logging_steps=100000,
        disable_tqdm=True,
        seed=0,
    )
    lora = LoraConfig(r=64, lora_alpha=128, lora_dropout=0.0, target_modules=LORA_TARGETS)
    model = load_model(spec, AutoModelForImageTextToText)
    return SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=processor_for(spec), peft_config=lora
    )


class SampleDataset:
    """sample_finetune_vision.py's training dataset: per row, the processor on the chat prompt (``<|image_1|>`` then
    the question; ``<|image|>`` for transformers' native processor) and the image, the answer tokenised after it
    (``{answer}<|end|><|endoftext|>``), labels -100 on the prompt, rows cut at 8192 tokens."""

    def __init__(self, rows: list[dict], processor):
        self.rows, self.processor = rows, processor

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        import torch
        from PIL import Image

        row = self.rows[i]
        with Image.open(row["image"]) as image:
            image = image.convert("RGB")
        tokenizer = self.processor.tokenizer
        prompt = f"<|user|><|image|>{row['question']}<|end|><|assistant|>"  # the hub template's rendering
        inputs = self.processor([prompt], [image], return_tensors="pt")
        answer = tokenizer(f"{row['answer']}<|end|><|endoftext|>", return_tensors="pt").input_ids
        input_ids = torch.cat([inputs["input_ids"], answer], 1)[:, :8192]
        labels = torch.full_like(input_ids, -100)
        labels[:, -answer.shape[1] :] = answer
        keys = ("image_pixel_values", "image_attention_mask", "image_sizes")
        return {"input_ids": input_ids, "labels": labels, **{key: inputs[key] for key in keys}}


def sample_collate(batch: list[dict]) -> dict:
    """The sample's collate function: ids right-padded with 0, labels padded with 0 too (as published: at its
    per-device batch 1 nothing is padded), ``attention_mask = input_ids != 0``, image tensors concatenated with zero
    padding to the largest crop count."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    def cat_with_pad(tensors):
        out = tensors[0].new_zeros(
            sum(t.shape[0] for t in tensors), *[max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
        )
        start = 0
        for t in tensors:
            out[(slice(start, start + t.shape[0]), *[slice(0, n) for n in t.shape[1:]])] = t
            start += t.shape[0]
        return out

    input_ids = pad_sequence([b["input_ids"][0] for b in batch], batch_first=True, padding_value=0)
    return {
        "input_ids": input_ids,
        "labels": pad_sequence([b["labels"][0] for b in batch], batch_first=True, padding_value=0),
        "attention_mask": (input_ids != 0).long(),
        "image_pixel_values": cat_with_pad([b["image_pixel_values"] for b in batch]),
        "image_attention_mask": cat_with_pad([b["image_attention_mask"] for b in batch]),
        "image_sizes": torch.cat([b["image_sizes"] for b in batch]),
    }


def phi4mm_sample_trainer(spec: dict):
    """sample_finetune_vision.py on transformers' native model: the audio encoder deleted, the vision LoRA active
    and trainable, every image-embedding parameter trainable, HF ``Trainer`` with the model's own loss (logits at
    every position), its optimiser settings, gradient checkpointing and ``ddp_find_unused_parameters``."""
    from peft import PeftModel
    from transformers import Trainer

    from ..families.phi4mm import adapter_folder

    processor = processor_for(spec)
    model = load_model(spec)
    del model.model.embed_tokens_extend.audio_embed
    model = PeftModel.from_pretrained(model, str(adapter_folder(spec["model_dir"])), is_trainable=True)
    for param in model.get_base_model().model.embed_tokens_extend.image_embed.parameters():
        param.requires_grad = True
    args = microsoft_arguments(spec, spec["mode"] == "phi4mm-sample", ddp_find_unused_parameters=True)
    return Trainer(
        model=model, args=args, train_dataset=SampleDataset(spec_rows(spec), processor), data_collator=sample_collate
    )


BUILDERS = {
    "official": official_trainer,
    "official-frozen": official_trainer,
    "official-frozen-bs1": official_trainer,
    "official-bs1": official_trainer,
    "official-frozen-bs1-nohead": official_trainer,
    "guide": guide_trainer,
    "trl": trl_trainer,
    "ours": ours_trainer,
    "ours-ckpt-2": ours_trainer,
    "ours-no-ckpt": ours_trainer,
    "phi4mm-sample": phi4mm_sample_trainer,
    "phi4mm-sample-batched": phi4mm_sample_trainer,
    "phi4mm-ours": ours_trainer,
    "phi4mm-ours-shipped": ours_trainer,
}


def spec_rows(spec: dict) -> list[dict]:
    return json.loads(Path(spec["rows"]).read_text())
