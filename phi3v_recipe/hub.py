"""The Hugging Face Hub side: a token check before training, the model card, and a push that never loses work.

python -m phi3v_recipe.hub push OUTPUT_DIR --repo-id USER/NAME [--private]   # (re)try an upload
"""

import argparse
import json
from pathlib import Path

from huggingface_hub import HfApi, get_token

CARD_TEMPLATE = """---
{front_matter}library_name: peft
tags: [phi3_v, phi3v-recipe, trl, sft, vision-language]
---

# {title}

Fine-tuned from {base_link} with phi3v-recipe (TRL `SFTTrainer`, loss on the assistant's answers only).

- Dataset: `{dataset}`
- Recipe: `{recipe}`
- Task: {task}

## Metrics

{metrics}

## Usage

phi3v-recipe is not on PyPI: install it from its source folder (`pip install .`, or `make setup` there), then:

```bash
python -m phi3v_recipe.predict --adapter {repo_or_dir} --image product.jpg
```

```python
import phi3v_recipe  # registers the native phi3_v model: no trust_remote_code
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

base = AutoModelForImageTextToText.from_pretrained("{base_model}", dtype="auto")
model = PeftModel.from_pretrained(base, "{repo_or_dir}")
processor = AutoProcessor.from_pretrained("{repo_or_dir}")
```
"""


def is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a Hub repo id (``owner/name``) rather than a local folder."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not Path(name).exists() and not name.startswith((".", "~"))


def task_description(recipe) -> str:
    """One line on what the model was trained to answer."""
    if recipe.data_format == "template":
        return f'the user turn is the image(s) + "{recipe.question}"; the answer is `{recipe.answer_template}`.'
    return f"{recipe.data_format} conversations (every assistant turn trained), scored by {recipe.scoring()}."


class PushNotReady(ValueError):
    """push_to_hub was asked for but cannot succeed; raised before any model is loaded."""


def check_push_ready(hub_model_id: str | None, hub_token: str | None) -> str:
    """Return the token to push with, or raise PushNotReady with the fix."""
    if not hub_model_id:
        raise PushNotReady(
            "push_to_hub is true but hub_model_id is not set. Add `hub_model_id: <user>/<name>` to the "
            "recipe (or pass --hub_model_id), or set push_to_hub: false."
        )
    token = hub_token or get_token()
    if not token:
        raise PushNotReady(
            f"push_to_hub is true but no Hugging Face token was found, so pushing to {hub_model_id} would fail after "
            "training. Fix: run `hf auth login`, or export HF_TOKEN=<a write token> (docker: -e HF_TOKEN), "
            "or set push_to_hub: false to keep the result local."
        )
    return token


def format_metrics(metrics: dict) -> str:
    rows = [(k, v) for k, v in sorted(metrics.items()) if v is not None]
    if not rows:
        return "No evaluation was run."
    body = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows)
    return "| metric | value |\n|---|---|\n" + body


def write_model_card(out_dir: str | Path, base_model: str, recipe_path: str, recipe, metrics: dict, repo_or_dir: str):
    """Write README.md (the model card) and metrics.json into ``out_dir``."""
    out = Path(out_dir)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    hub = is_hub_id(base_model)
    card = CARD_TEMPLATE.format(
        title=Path(repo_or_dir).name,
        front_matter=f"base_model: {base_model}\n" if hub else "",
        base_link=f"[`{base_model}`](https://huggingface.co/{base_model})" if hub else f"`{base_model}`",
        base_model=base_model,
        dataset=recipe.dataset,
        recipe=recipe_path,
        task=task_description(recipe),
        metrics=format_metrics(metrics),
        repo_or_dir=repo_or_dir,
    )
    path = out / "README.md"
    path.write_text(card)
    return path


def retry_command(out_dir: str | Path, repo_id: str, private: bool) -> str:
    return f"python -m phi3v_recipe.hub push {out_dir} --repo-id {repo_id}" + (" --private" if private else "")


def push_folder(out_dir: str | Path, repo_id: str, token: str | None = None, private: bool = False) -> str | None:
    """Upload ``out_dir`` to ``repo_id``. On failure keep the folder, print the retry command and return None."""
    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(out_dir),
            ignore_patterns=["checkpoint-*", "wandb/*", "*.pt", "*.pth"],
            commit_message="Upload adapter trained with phi3v-recipe",
        )
    except Exception as err:  # any failure: the local result is what matters now
        print(
            f"Push to {repo_id} failed ({type(err).__name__}: {err}).\n"
            f"The trained adapter is safe in {out_dir}. Retry with:\n  {retry_command(out_dir, repo_id, private)}"
        )
        return None
    print(f"Pushed {out_dir} to https://huggingface.co/{repo_id}")
    return str(info)


def main() -> None:
    parser = argparse.ArgumentParser(description="Push a trained output folder to the Hugging Face Hub.")
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="upload an output folder (adapter, processor, model card)")
    push.add_argument("out_dir")
    push.add_argument("--repo-id", required=True)
    push.add_argument("--private", action="store_true")
    args = parser.parse_args()
    token = check_push_ready(args.repo_id, None)
    if push_folder(args.out_dir, args.repo_id, token, args.private) is None:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
