"""Fine-tune Phi-3-Vision with TRL's SFTTrainer from a recipe.

    python -m phi3v_recipe.train --config recipes/burberry_lora.yaml [--key value ...]
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml -m phi3v_recipe.train --config recipes/X.yaml

Load recipe -> check the Hub push can succeed -> build data -> build model -> build trainer -> train -> save ->
evaluate -> model card -> push.
"""

import contextlib
import dataclasses
import functools
import json
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
import yaml
from accelerate import PartialState
from transformers import AutoModelForCausalLM, TrainerCallback
from transformers.trainer_utils import rotate_checkpoints
from transformers.utils import is_flash_attn_2_available
from trl import SFTTrainer, get_peft_config, get_quantization_config

from . import export, hub, runs
from .collator import VisionSFTCollator
from .config import CLIP_LINEARS, no_gpu, parse_recipe
from .data import prepare_data
from .errors import SaidByProcessZero, UserError, fresh_line, run, signals_held, stopped_by, unloadable_model
from .evaluate import evaluate
from .families import crops_of, family_of, family_of_model, family_of_processor
from .files import follow_umask, full_disk_is_one_line
from .loss import fused_head_at_labelled_positions, labelled_positions_loss
from .recipe_file import config_path
from .tracking import PredictionTableCallback, configure_wandb


def resolved_recipe(recipe, model_args, training_args) -> str:
    """The recipe as it will run: all our and model keys, and the training keys that differ from their default.
    Secrets (any key with 'token' in its name) are never shown."""
    resolved = {}
    for config in (recipe, model_args, training_args):
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if config is training_args:
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                if value == default:
                    continue
            if "token" in f.name and value is not None:
                value = "<hidden>"
            resolved[f.name] = value
    return yaml.safe_dump(json.loads(json.dumps(resolved, default=str)), sort_keys=True)


def load_processor(model_args, recipe):
    """The model's processor (its family's), at the recipe's crop setting when it sets one."""
    family = family_of(model_args.model_name_or_path, model_args.model_revision)
    return family.load_processor(model_args.model_name_or_path, model_args.model_revision, crops_of(family, recipe))


def load_model(model_args, recipe, processor):
    """The base model (optionally in 4/8-bit), with the parts that must not train frozen."""
    from . import register

    register()  # the native phi3_v (the phi3v-recipe command registers it only where a model is loaded)
    family = family_of_processor(processor)
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        quantization_config.llm_int8_skip_modules = family.QUANTIZATION_SKIP
    # A quantized model is placed whole on this process's GPU (under FSDP / DDP each process holds its copy).
    on_gpu = quantization_config is not None and torch.cuda.is_available()
    attn = model_args.attn_implementation or ("flash_attention_2" if is_flash_attn_2_available() else "sdpa")
    dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            dtype=dtype,
            attn_implementation=attn,
            quantization_config=quantization_config,
            device_map={"": PartialState().local_process_index} if on_gpu else None,
        )
    except Exception as err:
        raise unloadable_model(err, model_args.model_name_or_path) or err from None
    if Path(model_args.model_name_or_path).expanduser().is_dir():  # the adapter records where its base is: absolute,
        base = str(Path(model_args.model_name_or_path).expanduser().resolve())  # so that any folder works
        model.config._name_or_path = model.name_or_path = base  # (PEFT writes name_or_path into adapter_config.json)
    # The vision tower's last layer(s) and norms never reach the outputs: frozen, so DDP/FSDP see no unused gradients.
    for module in family.unused_modules(model):
        module.requires_grad_(False)
    family.skip_unused(model)
    if recipe.freeze_vision_tower:
        family.vision_tower(model).requires_grad_(False)
    # The hub config.json says eos 2 (`</s>`); the chat format ends an answer with <|end|> then <|endoftext|>.
    tokenizer = processor.tokenizer
    for config in (model.config, model.generation_config):
        config.bos_token_id, config.pad_token_id = tokenizer.bos_token_id, tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")]
    return model


class Phi3VSFTTrainer(SFTTrainer):
    """SFTTrainer that logs throughput (samples/s between two logs) and, on the CPU, scores only labelled positions.

    TRL's fused LM head projects only labelled positions on Triton devices; elsewhere it scores every position of
    the batch against the 32,064-word vocabulary (static shapes for compilers), which on the CPU costs most of the
    step. There the plain next-token loss is computed by ``labelled_positions_loss`` instead, with the same
    normalisation and metrics as TRL's."""

    _last_log = None

    def _get_dataloader(self, *args, **kwargs):
        loader = super()._get_dataloader(*args, **kwargs)
        torch_loader = getattr(loader, "base_dataloader", loader)  # Accelerate's DataLoaderShard wraps torch's
        if torch_loader.num_workers and hasattr(os, "setpgid"):
            torch_loader.worker_init_fn = functools.partial(out_of_the_process_group, then=torch_loader.worker_init_fn)
        return loader

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        plain_nll = self.args.loss_type == "nll" and self.label_smoother is None and self.compute_loss_func is None
        if return_outputs or not plain_nll or self.aux_loss_enabled or inputs["input_ids"].device.type != "cpu":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, logits, targets = labelled_positions_loss(model, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as Trainer: DDP averages gradients over processes
        mode = "train" if model.training else "eval"
        with torch.no_grad():  # TRL's metrics: entropy and top-1 accuracy at labelled tokens, tokens seen
            log_probs = logits.log_softmax(-1)
            entropy = -(log_probs.exp() * log_probs).sum()
            local = [len(targets), entropy, (logits.argmax(-1) == targets).sum(), inputs["attention_mask"].sum()]
            local = torch.stack([torch.as_tensor(x, dtype=torch.float32, device=logits.device) for x in local])
            count, entropy, correct, tokens = self.accelerator.gather_for_metrics(local[None]).sum(0).tolist()
        self._metrics[mode]["entropy"].append(entropy / count if count else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append(correct / count if count else 0.0)
        if mode == "train":
            self._total_train_tokens += int(tokens)
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss

    def create_model_card(self, *args, **kwargs):
        """Nothing: the run's model card is ours, written when it ends (hub.write_model_card). TRL's draft, written at
        each checkpoint, names no base for a local one ("a fine-tuned version of [None]") and was left as the card of
        an interrupted run."""

    _staging = None  # set while a checkpoint is being written aside

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)  # the adapter or model, in the output folder and in every checkpoint
        follow_umask(output_dir or self.args.output_dir)

    def _get_output_dir(self, trial):
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """Write the checkpoint aside, then rename it into place: a checkpoint is complete or absent. Older ones are
        rotated only once the new one is in place."""
        out = Path(self.args.output_dir)
        self._staging = out / runs.STAGING
        try:
            with disk_full_is_a_user_error(out):
                super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()  # every process has written its part (RNG states)
        if self.args.should_save:
            name = f"checkpoint-{self.state.global_step}"
            if (out / name).exists():
                shutil.rmtree(out / name)
            (out / runs.STAGING / name).rename(out / name)
            shutil.rmtree(out / runs.STAGING, ignore_errors=True)
            rotate_checkpoints(str(out), self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def log(self, logs, start_time=None):
        if "loss" in logs:
            now, step = time.perf_counter(), self.state.global_step
            if self._last_log is not None and step > self._last_log[1]:
                samples = (step - self._last_log[1]) * self.args.per_device_train_batch_size
                samples *= self.args.gradient_accumulation_steps * self.args.world_size
                logs["samples_per_second"] = round(samples / (now - self._last_log[0]), 3)
            self._last_log = (now, step)
        super().log(logs, start_time)


def build_trainer(model_args, recipe, args, processor, data, callbacks=()) -> "Phi3VSFTTrainer":
    """The model (with its LoRA config) and the trainer over the prepared data: what every run trains with."""
    # Batches come pinned from the DataLoader (dataloader_pin_memory, on by default): copy them to the GPU without
    # the host waiting for each copy.
    args.accelerator_config.non_blocking = args.dataloader_pin_memory
    if recipe.stage == "grpo":
        return build_grpo_trainer(model_args, recipe, args, processor, data, callbacks)
    if recipe.stage == "dpo":
        return build_dpo_trainer(model_args, recipe, args, processor, data, callbacks)
    # Our collator builds the batches from the raw rows: TRL must neither drop columns nor tokenize the dataset.
    args.remove_unused_columns = False
    args.dataset_kwargs = {"skip_prepare_dataset": True}
    model, peft_config = model_and_lora(model_args, recipe, processor)
    trainer = Phi3VSFTTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=processor,
        data_collator=VisionSFTCollator(
            processor, args.max_length, args.pad_to_multiple_of, str(Path(args.output_dir) / "skipped_rows.csv")
        ),
        peft_config=peft_config,
        callbacks=list(callbacks),
    )
    train_saved_modules_in_fp32(trainer.model)
    check_every_trainable_reaches_the_loss(trainer.model)
    return trainer


def build_grpo_trainer(model_args, recipe, args, processor, data, callbacks=()):
    """TRL's GRPOTrainer on the recipe's rows as prompts, rewarded by ``recipe.rewards`` (reinforce.py): a new LoRA
    on model_name_or_path, or the SFT adapter of ``sft_adapter`` trained on. With beta > 0 the reference model is
    the same weights with the adapter off (no second copy)."""
    from trl import GRPOTrainer

    from .reinforce import grpo_rows, reward_functions

    args.remove_unused_columns = False  # the rewards read the row's truth from its `row` column
    model, peft_config = sft_adapter_or_lora(model_args, recipe, processor)
    if getattr(model.config, "image_token_id", None) is None:  # TRL keeps sampling off it; Phi-4's config lacks it
        model.config.image_token_id = processor.image_token_id
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_functions(recipe),
        args=args,
        train_dataset=grpo_rows(data.train, recipe),
        processing_class=family_of_processor(processor).for_grpo(model, processor),
        peft_config=peft_config,
        callbacks=list(callbacks),
    )
    train_saved_modules_in_fp32(trainer.model)
    return trainer


def build_dpo_trainer(model_args, recipe, args, processor, data, callbacks=()):
    """TRL's DPOTrainer on the recipe's preference pairs (pairs.py): a new LoRA on model_name_or_path, or the SFT
    adapter of ``sft_adapter`` trained on. The reference model is the same weights with the adapter off."""
    from trl import DPOTrainer

    model, peft_config = sft_adapter_or_lora(model_args, recipe, processor)
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=list(callbacks),
    )
    train_saved_modules_in_fp32(trainer.model)
    return trainer


def sft_adapter_or_lora(model_args, recipe, processor):
    """(model, LoRA config): the SFT adapter of ``sft_adapter`` made trainable (no new LoRA), else a new LoRA."""
    if recipe.sft_adapter is None:
        return model_and_lora(model_args, recipe, processor)
    from peft import PeftModel

    from .predict import resolve

    adapter_dir = resolve(recipe.sft_adapter, "SFT adapter", ("adapter_config.json",))  # before the model loads
    model = PeftModel.from_pretrained(load_model(model_args, recipe, processor), adapter_dir, is_trainable=True)
    return model, None


def model_and_lora(model_args, recipe, processor):
    """The base model and the LoRA config to train it with (None: the family's own adapter, or no LoRA)."""
    family = family_of_processor(processor)
    model = load_model(model_args, recipe, processor)
    peft_config = get_peft_config(model_args)
    if peft_config is not None:  # a family may bring its own adapter (Phi-4-multimodal's vision LoRA)
        own = family.peft_model(model, model_args, model_args.model_name_or_path, model_args.model_revision)
        if own is not None:
            model, peft_config = own, None
    if peft_config is not None and model_args.lora_target_modules is None:
        peft_config.target_modules = family.LORA_TARGETS
    if peft_config is not None and set(peft_config.target_modules or []) & CLIP_LINEARS:
        # CLIP's modules are named alike in every layer: no adapter on the layers past the feature layer, which never
        # reach the output (they would get no gradient, and DDP would stop at its second step). The targets are then
        # named in full, as PEFT matches them (a name, or a name's last parts): every PEFT reads such a list, where
        # exclude_modules (PEFT 0.14+) is refused by the PEFT 0.11-0.13 that users load adapters with.
        unused = {id(sub) for module in family.unused_modules(model) for sub in module.modules()}
        targets = set(peft_config.target_modules)
        peft_config.target_modules = sorted(
            name
            for name, module in model.named_modules()
            if id(module) not in unused and any(name == t or name.endswith(f".{t}") for t in targets)
        )
    return model, peft_config


def train_saved_modules_in_fp32(model) -> None:
    """A module trained whole beside the adapter (PEFT's ``modules_to_save``: Phi-4-multimodal's image embedding)
    trains in fp32, as PEFT keeps an adapter's weights, whatever the model's dtype; autocast still computes in bf16.
    In bf16, an AdamW step at the recipe's learning rate (4e-5) is less than half a bf16 step of most weights: in a
    test here, 45-76% of bf16 weights (std 0.02-0.05) were unchanged after 10 such steps. TRL's bf16 cast of a
    quantized model's trainable parameters (QLoRA's recipe) is undone here too. The copy's frozen parts (SigLIP's
    layers past the feature layer) go to fp32 with it: on the CPU a bf16 norm refuses an fp32 input."""
    from peft.utils import ModulesToSaveWrapper

    for wrapper in model.modules():
        if isinstance(wrapper, ModulesToSaveWrapper):
            for copy in wrapper.modules_to_save.values():
                for param in copy.parameters():
                    param.data = param.data.float()


def check_every_trainable_reaches_the_loss(model) -> None:
    """A trainable parameter in the CLIP layers past the feature layer never gets a gradient: DDP would stop with a
    reduction error at the second step (it runs without find_unused_parameters), and one process would train it for
    nothing. Said before training, naming the parameters."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    family = family_of_model(base)
    unused = {id(p) for module in family.unused_modules(base) for p in module.parameters()}
    stuck = [
        name for name, parameter in base.named_parameters() if parameter.requires_grad and id(parameter) in unused
    ]
    if stuck:
        raise UserError(
            f"{len(stuck)} trainable parameters sit in vision-tower layers that never reach the output (the tower is "
            f"read at its layer -2), such as {stuck[0]}: leave those layers out of lora_modules_to_save."
        )


def claim_output_dir(out: Path, recipe, args, model_args) -> Path | None:
    """Process 0 claims the folder (and may empty it) first; every other process then finds the same checkpoint to
    resume from, so that all agree on the steps left (they would otherwise start from step 0 and deadlock). Process
    0's refusal (a folder holding another run, a finished run) is every process's: the others stop with it, where
    they used to wait for it at the next barrier and end in gloo's traceback."""
    refusal = [None]
    if args.process_index == 0:
        try:
            settings = runs.snapshot(recipe, args, model_args)
            resume = runs.prepare_output_dir(
                out,
                settings,
                resume_value(args.resume_from_checkpoint),
                recipe.overwrite_output_dir,
                args.save_only_model,
            )
            print("Resolved recipe:\n" + resolved_recipe(recipe, model_args, args))
        except UserError as err:
            refusal = [str(err)]
            if args.world_size == 1:
                raise
    if args.world_size > 1:
        torch.distributed.broadcast_object_list(refusal, src=0)  # the others wait here for process 0's claim
        if refusal[0] is not None:
            raise UserError(refusal[0]) if args.process_index == 0 else SaidByProcessZero(refusal[0])
    if args.process_index != 0:
        resume = runs.resume_point(out, resume_value(args.resume_from_checkpoint), args.save_only_model)
    return resume


def resume_value(value):
    """``--resume_from_checkpoint true`` resumes from the last checkpoint in output_dir; a path from that one; ``auto``
    from the last one when there is one, else the run starts (what a requeued or recovered job runs)."""
    if value is None or str(value).lower() in ("false", "no", ""):
        return None
    if str(value).lower() == "auto":
        return "auto"
    return True if str(value).lower() in ("true", "yes", "last") else value


def disk_full_is_a_user_error(out: Path):
    """A full disk while saving is one line that says so, not a traceback; what was saved before stays intact."""

    def advice() -> str:  # read when the disk fills: a checkpoint may have been saved since the run began
        if runs.has_complete_checkpoint(out):
            return "set output_dir on another disk; the checkpoints saved before are intact (resume with --resume_from_checkpoint true)"
        return "set output_dir on another disk; no complete checkpoint was saved before, so the run must start again"

    return full_disk_is_one_line(out, "saving", advice)


def check_device(args, recipe_path: str) -> None:
    """A recipe that trains on a GPU needs one: said at once, with the way out."""
    has_accelerator = torch.cuda.is_available() or torch.backends.mps.is_available()
    if not args.use_cpu and not has_accelerator:
        raise no_gpu(recipe_path)


def read_data(recipe, processor, args):
    """The recipe's rows, checked and split: answers to train on, or (``stage: dpo``) preference pairs, which have
    their own reader and checks."""
    if recipe.stage == "dpo":
        from .pairs import read_pairs

        return read_pairs(recipe)
    return prepare_data(recipe, processor, getattr(args, "max_length", None), getattr(args, "dataset_num_proc", None))


def main(argv: list[str] | None = None) -> SFTTrainer:
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe, args, model_args = parse_recipe(argv)
    recipe_path = config_path(argv) or "(command line)"
    check_device(args, recipe_path)
    # Secrets never reach a file: a recipe's token is taken out of the arguments (saved in training_args.bin) before
    # anything is written (the command line cannot hold one: --hub_token is refused).
    token, args.hub_token = args.hub_token, None
    push, args.push_to_hub = args.push_to_hub, False  # one push at the end, so a failed upload never loses work
    token = hub.check_push_ready(args.hub_model_id, token) if push else None
    hub.ensure_available(model_args.model_name_or_path, "model", revision=model_args.model_revision)
    out = Path(args.output_dir)
    resume = claim_output_dir(out, recipe, args, model_args)
    saved = False  # the trained model is in the output folder
    if args.ddp_find_unused_parameters is None:
        # Every trainable parameter reaches the loss (the CLIP layers that do not are frozen in load_model): no extra
        # pass over the autograd graph each step, which transformers would add when activation checkpointing is off.
        args.ddp_find_unused_parameters = False
    try:
        args.resume_from_checkpoint = None if resume is None else str(resume)
        use_wandb = configure_wandb(args.report_to, args.output_dir, resume is not None, args.process_index == 0)

        processor = load_processor(model_args, recipe)
        with args.main_process_first(desc="preparing the data"):
            data = read_data(recipe, processor, args)
        recipe = data.args  # the row format and columns settled from the source
        if args.process_index == 0:
            skipped_file = data.write_skipped(out / "skipped_rows.csv")
            print(f"Data: {data.summary()} (skipped rows listed in {skipped_file})")
        if len(data.train) == 0:
            raise UserError(f"No training rows left after the checks; see {out / 'skipped_rows.csv'} for why.")
        if data.eval is None and args.eval_strategy != "no":
            raise UserError(
                f"eval_strategy={args.eval_strategy.value} but there is no eval split (eval_fraction=0 and no "
                "eval_split): set --eval_strategy no, or keep an eval split."
            )

        callbacks = []
        if use_wandb and data.eval is not None and recipe.predictions_to_log and recipe.stage != "dpo":
            callbacks.append(
                PredictionTableCallback(
                    processor, data.eval.select(range(min(recipe.predictions_to_log, len(data.eval)))).to_list()
                )
            )
        trainer = build_trainer(model_args, recipe, args, processor, data, callbacks)
        adapter = model_args.use_peft  # False: full fine-tuning
        if use_wandb and trainer.is_world_process_zero():
            import wandb

            if wandb.run is not None:
                wandb.config.update(
                    {"recipe": dataclasses.asdict(recipe), "model": dataclasses.asdict(model_args)},
                    allow_val_change=True,
                )

        stop = StopOnSignal()
        trainer.add_callback(stop)
        logging_services = outlive_logging_services(trainer, stop)
        with stop.listening(), fused_head_at_labelled_positions():
            train_result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
        if stop.signal is not None:  # stopped early with a checkpoint: no evaluation, save or push
            for service in logging_services:
                service.close()
            if args.process_index == 0:
                print(
                    f"{fresh_line()}Stopped on {stop.signal.name} after step {trainer.state.global_step}.",
                    file=sys.stderr,
                )
                print(how_to_resume(out, argv, args.save_only_model, args.world_size), file=sys.stderr)
            raise SystemExit(128 + stop.signal.value)
        if trainer.state.global_step == 0:
            raise UserError(
                "The run trained 0 steps, so nothing was saved or pushed; check max_steps / num_train_epochs."
            )
        metrics = {f"train_{k}" if not k.startswith("train") else k: v for k, v in train_result.metrics.items()}
        if data.eval is not None and recipe.stage == "sft":  # GRPO's evaluation is the scored one, below
            metrics.update(last_evaluation(trainer) or trainer.evaluate())
        if trainer.is_fsdp_enabled:  # checkpoints stay sharded; the output is the whole model, gathered from them
            trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        with signals_held(), disk_full_is_a_user_error(out):  # a signal during the save stops the run after it
            trainer.save_model(args.output_dir)  # the adapter (or full model) as safetensors, and the processor
            if trainer.is_world_process_zero():
                carry_base_files(out, model_args, processor, adapter)
            saved = True
        if recipe.stage == "grpo" and trainer.is_world_process_zero():
            from .plots import write_reward_curve

            curve = write_reward_curve(trainer.state.log_history, out)
            if curve is not None:
                print(f"Mean reward per logged step: {curve}")
        if recipe.stage == "dpo" and recipe.scored_evaluation and trainer.is_world_process_zero():
            print(
                "The scored evaluation needs the task's rows, not pairs: score this adapter with "
                f"phi3v-recipe evaluate --config <the SFT recipe> --adapter {out}"
            )
        elif data.eval is not None and recipe.scored_evaluation and trainer.is_world_process_zero():
            if trainer.is_fsdp_enabled:  # generation needs every shard: score afterwards from the saved model
                print(
                    f"Scored evaluation skipped under FSDP; run: python -m phi3v_recipe.evaluate --config {recipe_path}"
                )
            else:
                base = family_of_processor(processor).as_shipped(trainer.model) if adapter else None
                metrics.update(
                    evaluate(
                        trainer.model,
                        processor,
                        data.eval.to_list(),
                        data.train.to_list(),
                        recipe,
                        args.output_dir,
                        base,
                        batch_size=args.per_device_eval_batch_size,
                    )
                )
        if trainer.is_world_process_zero():
            repo_or_dir = args.hub_model_id if push else args.output_dir
            hub.write_model_card(
                args.output_dir,
                model_args.model_name_or_path,
                recipe_path,
                recipe,
                metrics,
                repo_or_dir,
                adapter,
                model_args.model_revision,
                family_of_processor(processor),
            )
            print(
                f"Saved the trained {'adapter' if adapter else 'model'}, processor and model card to {args.output_dir}"
            )
            if push:
                hub.push_folder(args.output_dir, args.hub_model_id, token, args.hub_private_repo or False)
        return trainer
    except (KeyboardInterrupt, Exception) as err:
        signum = stopped_by(err)  # a signal outside the training loop: data checks, model load, saving, evaluation
        if signum is None:
            raise
        if args.process_index == 0:
            print(f"{fresh_line()}Stopped on {signal.Signals(signum).name}.", file=sys.stderr)
            if saved:  # trained and saved: what is left is the scoring, the model card and the push
                print(
                    f"The trained {'adapter' if model_args.use_peft else 'model'} is saved in {out}; its scored "
                    "evaluation, model card and push were not done. Score it with:\n  "
                    f"{shlex.join([sys.executable, '-m', 'phi3v_recipe.evaluate', *runs.same_run(argv)])}",
                    file=sys.stderr,
                )
            else:
                print(how_to_resume(out, argv, args.save_only_model, args.world_size), file=sys.stderr)
        raise SystemExit(128 + signum) from None


def how_to_resume(out: Path, argv: list[str], save_only_model: bool, processes: int = 1) -> str:
    """What to run after an interrupted run: the command the user ran, resuming from its newest complete checkpoint,
    or, with none yet, the same command again (the folder then holds nothing to lose)."""
    if not runs.has_complete_checkpoint(out, save_only_model):
        return f"Stopped before the first checkpoint of {out}: nothing to resume; run the same command to start again."
    return f"Checkpoints of {out} are kept. Resume with:\n  {runs.resume_command(argv, processes)}"


def out_of_the_process_group(worker_id: int, then=None) -> None:
    """A DataLoader worker's start: its own process group, so that a signal to the run's group (Ctrl-C in the terminal,
    ``kill -- -PGID``) stops the training processes, which finish their step with the workers' batches, instead of
    killing the workers under them. A scheduler signals every process of the job (SLURM: SIGTERM to the whole process
    tree), so a worker also ignores SIGTERM and SIGINT: its training process ends it after the step. A worker still
    ends with its process (torch's workers watch their parent)."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if then is not None:
        then(worker_id)


class StopOnSignal(TrainerCallback):
    """Preemption (SIGTERM: a spot instance has a minute or two) or a first Ctrl-C: finish the current optimizer step,
    write a complete checkpoint, and stop; a second Ctrl-C stops at once. Every process stops at the same step: the
    flag is all-reduced at each step end (one tiny collective), so no process waits on another's collective."""

    def __init__(self):
        self.signal = None

    def _asked(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C
        self.signal = signal.Signals(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from now on Ctrl-C interrupts at once

    @contextlib.contextmanager
    def listening(self):
        previous = {sig: signal.signal(sig, self._asked) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def on_step_end(self, args, state, control, **kwargs):
        asked = self.signal is not None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([float(asked)], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            anyone = bool(flag.item())  # one host sync per step
            if anyone and not asked:  # another process was signalled: stop with it, at this step
                self.signal = signal.SIGTERM
            asked = anyone
        if asked:
            control.should_save = True
            control.should_training_stop = True
        return control


class OutlivesItsService:
    """A logging integration's callback (W&B) that, once the run is stopping on a signal, fails no step: a scheduler
    signals every process of the job (SLURM, a container's stop), the integration's service process too, and W&B's
    dies of it; logging to it then raised in the step that writes the checkpoint, or just after, and the stop ended
    in a traceback instead of its checkpoint. What it fails to log then is said once."""

    def __init__(self, callback, stop: "StopOnSignal"):
        self.callback, self.stop, self.failed = callback, stop, False

    def __getattr__(self, name):
        method = getattr(self.callback, name)
        if not name.startswith("on_"):
            return method

        def event(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except Exception as err:
                if self.stop.signal is None:
                    raise
                if not self.failed:
                    self.failed = True
                    service = type(self.callback).__name__.removesuffix("Callback")
                    print(f"{fresh_line()}Note: {service} stopped with the same signal ({type(err).__name__}); "
                          "its run continues on resume.", file=sys.stderr)  # fmt: skip

        return event

    def close(self) -> None:
        """A W&B whose service died: torn down here, where its failure is expected, not in its atexit hook (which
        printed a ConnectionResetError traceback as the process ended)."""
        from transformers.integrations import WandbCallback

        if self.failed and isinstance(self.callback, WandbCallback):
            import wandb

            try:
                wandb.teardown()
            except Exception:
                pass


def outlive_logging_services(trainer, stop: "StopOnSignal") -> list[OutlivesItsService]:
    """Wrap the trainer's logging integrations (report_to) in ``OutlivesItsService``; the wrapped ones."""
    from transformers.integrations import INTEGRATION_TO_CALLBACK

    services = tuple(INTEGRATION_TO_CALLBACK.values())
    handler = trainer.callback_handler
    handler.callbacks = [OutlivesItsService(c, stop) if isinstance(c, services) else c for c in handler.callbacks]
    return [c for c in handler.callbacks if isinstance(c, OutlivesItsService)]


def carry_base_files(out: Path, model_args, processor, adapter: bool) -> None:
    """The base's tokenizer and processor files, byte for byte (older tokenizers cannot read a re-saved one), and an
    adapter config that PEFT 0.11-0.13 load too (see export.py)."""
    base_dir = export.local_folder(model_args.model_name_or_path, model_args.model_revision)
    if base_dir is not None:
        crops = family_of_processor(processor).crop_setting(processor)
        export.copy_base_files(base_dir, out, crops, with_model_files=False)
    if adapter:
        newer = export.for_older_peft(out)
        if newer:
            print(
                f"Note: the adapter sets {', '.join(newer)}, which PEFT before 0.14 does not know: load it with PEFT 0.14+."
            )


def last_evaluation(trainer) -> dict | None:
    """The evaluation the trainer ran at its last step, if it did (so that it is not run twice)."""
    for entry in reversed(trainer.state.log_history):
        if "eval_loss" in entry:
            if entry.get("step") == trainer.state.global_step:
                return {k: v for k, v in entry.items() if k.startswith("eval_")}
            return None
    return None


if __name__ == "__main__":
    run(main)
