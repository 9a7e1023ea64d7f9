"""The recipe keys of our own: where the data comes from, its shape and scoring (``DataArguments``) and what is
specific to Phi-3-Vision (``RecipeArguments``). Plain dataclasses, importable without the heavy libraries, so that
``--help`` and recipe checks answer at once. Each key is validated in ``__post_init__``: a bad value is a
``UserError`` that names the key, the value and the fix.
"""

import string
from dataclasses import dataclass, field

from .errors import UserError

FORMATS = ("template", "qa", "messages", "conversations", "texts")
METRICS = ("template", "exact_match", "anls", "accuracy")
STAGES = ("sft", "grpo", "dpo")
BUILT_IN_REWARDS = ("metric", "format")
DEFAULT_QUESTION = "What is shown in this image?"
DEFAULT_ANSWER_TEMPLATE = "Product: {title}, Category: {category3_code}, Full Price: {full_price}"


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


@dataclass
class DataArguments:
    """Where the examples come from, what shape they have, and how they are scored."""

    dataset: str = field(
        default="data/sample/burberry.csv",
        metadata={"help": "A Hub dataset id, a local CSV/JSONL/Parquet file, an image folder or a video folder."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "The split to read from the source."})
    dataset_archive: str | None = field(
        default=None,
        metadata={"help": "A .tar/.zip file in the Hub dataset repo to download and read as a folder (UCF-101)."},
    )
    data_format: str = field(
        default="auto",
        metadata={"help": f"How rows become conversations: auto (from the columns) or one of {', '.join(FORMATS)}."},
    )
    image_column: str | None = field(
        default=None,
        metadata={
            "help": "Column with the image(s): paths (a list, or ';'-separated in a CSV) or an Image feature. "
            "Default: the first of images, image, local_image_path, image_path that exists."
        },
    )
    video_column: str | None = field(
        default=None,
        metadata={"help": "Column with a video (a video file, or a list of frames), sampled to max_frames images."},
    )
    max_frames: int = field(default=8, metadata={"help": "Frames sampled evenly from each video (official: 8)."})
    image_url_column: str | None = field(
        default=None, metadata={"help": "Column of image URLs to fetch (e.g. 'imageurl'); replaces image_column."}
    )
    image_root: str | None = field(
        default=None, metadata={"help": "Folder that relative image paths start from (default: the data file's)."}
    )
    id_column: str = field(
        default="product_code",
        metadata={"help": "Column that names a row in reports (skipped_rows.csv); else the row index."},
    )
    image_cache_dir: str = field(default="data/images", metadata={"help": "Where fetched images are cached."})
    question: str = field(
        default=DEFAULT_QUESTION, metadata={"help": "The question asked about every image (template format)."}
    )
    question_column: str | None = field(default=None, metadata={"help": "Column with each row's question."})
    answer_column: str | None = field(
        default=None, metadata={"help": "Column with each row's answer, or a list of answers (first one trained)."}
    )
    answer_template: str = field(
        default=DEFAULT_ANSWER_TEMPLATE, metadata={"help": "The answer, with {column} fields filled from the row."}
    )
    numeric_fields: list[str] = field(
        default_factory=lambda: ["full_price"], metadata={"help": "Template fields that must be numbers."}
    )
    metric: str | None = field(
        default=None,
        metadata={
            "help": f"How answers are scored: one of {', '.join(METRICS)}. Default: template for the template format, "
            "else exact_match."
        },
    )
    labels: list[str] | None = field(default=None, metadata={"help": "The label set of the accuracy metric."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of the rows held out for evaluation."})
    eval_split: str | None = field(
        default=None,
        metadata={
            "help": "Read the eval rows from this split of the source (e.g. validation) instead of holding out."
        },
    )
    split_seed: int = field(default=42, metadata={"help": "Seed of the (deterministic) train/eval split."})
    max_rows: int | None = field(default=None, metadata={"help": "Use only the first N rows of the source."})
    strict: bool = field(default=False, metadata={"help": "Fail on the first bad row instead of skipping it."})
    prepared_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where checked rows are kept for every process and rerun (default: $PHI3V_PREPARED_DIR, else "
            "phi3v-prepared in the datasets cache)."
        },
    )
    max_image_pixels: int = field(
        default=50_000_000, metadata={"help": "Images with more pixels are refused (decompression bombs)."}
    )

    def __post_init__(self):
        fields = template_fields(self.answer_template)
        if not fields:
            raise UserError(f"answer_template={self.answer_template!r} names no column; use fields like '{{title}}'.")
        if not 0 <= self.eval_fraction < 1:
            raise UserError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}.")
        unknown = set(self.numeric_fields) - set(fields)
        if unknown:
            raise UserError(
                f"numeric_fields {sorted(unknown)} are not fields of answer_template {self.answer_template!r}."
            )
        if self.data_format not in ("auto", *FORMATS):
            raise UserError(f"data_format={self.data_format!r} is not one of auto, {', '.join(FORMATS)}.")
        if self.metric is not None and self.metric not in METRICS:
            raise UserError(f"metric={self.metric!r} is not one of {', '.join(METRICS)}.")
        if self.metric == "accuracy" and not self.labels:
            raise UserError("metric: accuracy needs labels: the list of possible answers (e.g. [True, False]).")
        if self.labels is not None:
            self.labels = [str(label) for label in self.labels]
        if self.max_frames < 1:
            raise UserError(f"max_frames must be at least 1, got {self.max_frames}.")
        if self.max_rows is not None and self.max_rows < 1:
            raise UserError(f"max_rows must be at least 1 (or unset for every row), got {self.max_rows}.")
        if self.max_image_pixels < 1:
            raise UserError(f"max_image_pixels must be positive, got {self.max_image_pixels}.")

    def scoring(self) -> str:
        """The metric: the recipe's, else the one that fits the format."""
        return self.metric or ("template" if self.data_format in ("auto", "template") else "exact_match")


@dataclass
class RecipeArguments(DataArguments):
    """Our own recipe keys: the data (see DataArguments) plus what is specific to a model family and to a run."""

    num_crops: int | None = field(
        default=None,
        metadata={
            "help": "Max HD crops per image (1-16; the model card advises 16 single-image, 4 multi-image). "
            "Default: the checkpoint's preprocessor_config.json."
        },
    )
    dynamic_hd: int | None = field(
        default=None,
        metadata={
            "help": "Phi-4-multimodal: max crops per image (its fine-tuning sample: 36). Default: the checkpoint's."
        },
    )
    freeze_vision_tower: bool = field(
        default=True,
        metadata={
            "help": "Keep the CLIP vision tower frozen in full fine-tuning. Under LoRA only adapted modules train: "
            "the tower is adapted only when lora_target_modules names its layers (q_proj, k_proj, v_proj, out_proj, "
            "fc1, fc2)."
        },
    )
    predictions_to_log: int = field(
        default=8, metadata={"help": "Eval samples whose generated answers are logged as a table at each evaluation."}
    )
    scored_evaluation: bool = field(
        default=True,
        metadata={
            "help": "At the end, generate answers for the eval split and score them beside the base model and the "
            "trivial baseline (false: skip it, as a smoke run does)."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh in an output_dir that holds another run (its results are deleted)."},
    )
    stage: str = field(
        default="sft",
        metadata={
            "help": "sft: supervised fine-tuning on the answers (TRL's SFTTrainer); grpo: reinforcement on the task's "
            "own metric (TRL's GRPOTrainer, its keys: num_generations, max_completion_length, temperature, beta, ...); "
            "dpo: preference pairs (TRL's DPOTrainer; dataset: a pairs file, see phi3v-recipe pairs)."
        },
    )
    sft_adapter: str | None = field(
        default=None,
        metadata={
            "help": "grpo, dpo: the SFT adapter (folder or Hub id) to train on from, on model_name_or_path as its base; "
            "unset: a new LoRA on model_name_or_path (a base, or a merged or fully fine-tuned SFT model)."
        },
    )
    rewards: list[str] = field(
        default_factory=lambda: ["metric"],
        metadata={
            "help": "grpo: the rewards, summed: metric (the recipe's metric on each completion, as evaluate scores "
            "it; 0 when it does not parse), format (1 when it parses), or module:function for your own."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.num_crops is not None and not 1 <= self.num_crops <= 16:
            raise UserError(
                f"num_crops must be between 1 and 16 (as in the official fine-tuning), got {self.num_crops}."
            )
        if self.dynamic_hd is not None and self.dynamic_hd < 1:
            raise UserError(f"dynamic_hd must be at least 1 (the most crops per image), got {self.dynamic_hd}.")
        if self.predictions_to_log < 0:
            raise UserError(f"predictions_to_log must be 0 or more, got {self.predictions_to_log}.")
        if self.stage not in STAGES:
            raise UserError(f"stage={self.stage!r} is not one of {', '.join(STAGES)}.")
        for name in self.rewards:
            if name not in BUILT_IN_REWARDS and ":" not in name:
                raise UserError(
                    f"rewards: {name!r} is neither a built-in reward ({', '.join(BUILT_IN_REWARDS)}) nor "
                    "module:function (a Python function of your own)."
                )
        if self.stage == "sft" and self.sft_adapter is not None:
            raise UserError("sft_adapter is for stage: grpo or dpo (train on from an SFT adapter); unset it for SFT.")
