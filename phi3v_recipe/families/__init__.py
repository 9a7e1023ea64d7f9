"""Model families: what differs between the Phi vision models, one module each; everything else is shared.

A family module says, for its models:

- ``NAME`` (the ``--family`` of ``phi3v-recipe tiny``), ``MODEL_TYPE`` (``config.json``'s), ``HUB_MODEL``;
- ``CROP_KEY``, ``load_processor(path, revision, crops)``, ``processor_class()`` and ``crop_setting(processor)``: its
  processor, at a given number of crops per image (the recipe key ``num_crops`` or ``dynamic_hd``);
- ``batch_images(examples)``: how the image inputs of several examples (the image processor's
  ``model_input_names``) make one batch;
- ``LORA_TARGETS``, ``QUANTIZATION_SKIP``, ``unused_modules(model)`` (frozen: they never reach the loss),
  ``skip_unused(model)`` (the unused modules not run, where running them costs) and
  ``peft_model(model, model_args, path, revision)`` (the adapter a LoRA run trains, or None for TRL's, built from the
  recipe's LoRA keys), ``vision_tower(model)`` (``freeze_vision_tower``);
- ``for_grpo(model, processor)``: the processor TRL's ``GRPOTrainer`` is given, the model made to read its images;
- ``as_shipped(model)``: a context in which a model with a trained adapter answers as its base checkpoint ships (the
  "base model" column of every evaluation and the app);
- ``merged_note(base_dir)`` and ``card_usage(...)``: where a merged model loads, and the model card's usage code;
- ``write_tiny(out, corpus, seed, crops)``: a tiny random checkpoint in its hub layout, for the demo and the tests.

Adding a family is one module with these names, and one line below.
"""

from pathlib import Path

from ..errors import UserError
from . import phi3v, phi4mm

FAMILIES = {family.MODEL_TYPE: family for family in (phi3v, phi4mm)}
BY_NAME = {family.NAME: family for family in FAMILIES.values()}


def supported() -> str:
    return ", ".join(
        f"{family.NAME} ({family.HUB_MODEL}, model_type {model_type})" for model_type, family in FAMILIES.items()
    )


def model_type(path, revision=None) -> str:
    """``model_type`` of a checkpoint's config.json (a folder, or a hub id from the cache or the Hub)."""
    import json

    from transformers.utils import cached_file

    return json.loads(Path(cached_file(str(path), "config.json", revision=revision)).read_text())["model_type"]


def family_of(path, revision=None):
    """The family module of a checkpoint; one that is not a Phi vision model this project trains is a one-line error."""
    kind = model_type(path, revision)
    if kind not in FAMILIES:
        raise UserError(f"{path} is a {kind!r} model; this project trains: {supported()}.")
    return FAMILIES[kind]


def family_of_model(model):
    """The family of a loaded model (from its config)."""
    return FAMILIES[model.config.model_type]


def family_of_processor(processor):
    """The family whose processor this is."""
    for family in FAMILIES.values():
        if isinstance(processor, family.processor_class()):
            return family
    raise TypeError(
        f"{type(processor).__name__} is not the processor of a family this project trains ({supported()})."
    )


def crops_of(family, recipe) -> int | None:
    """The recipe's crop setting for this family; the other family's key set instead is a one-line error."""
    for other in FAMILIES.values():
        value = getattr(recipe, other.CROP_KEY)
        if other is not family and value is not None:
            raise UserError(
                f"{other.CROP_KEY} is the crop setting of {other.NAME} models; this model ({family.NAME}) takes "
                f"{family.CROP_KEY}."
            )
    return getattr(recipe, family.CROP_KEY)


def by_name(name: str):
    """The family called ``name`` (``--family``), or a one-line error listing them."""
    if name not in BY_NAME:
        raise UserError(f"--family {name!r} is not one of {', '.join(BY_NAME)}.")
    return BY_NAME[name]
