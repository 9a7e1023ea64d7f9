"""The Hugging Face Hub side: models and datasets found (or a clear error) before anything is loaded, a push that
is checked before training and never loses work, and the model card.

    python -m phi3v_recipe.hub push OUTPUT_DIR --repo_id USER/NAME [--private]   # (re)try an upload

A Hub id is looked up in the local cache first. When the Hub cannot be reached, a cached repo is used offline at
once (no retries), and an uncached one is an error that names it and says how to fetch it.
"""

import json
import os
import re
import sys
from functools import cache
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token, try_to_load_from_cache

from .errors import ArgumentParser, UserError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name; never starts with ./, / or ~
PLACEHOLDER = re.compile(r"your[-_]?(user(name)?|name|org|account)|<|>|^user/|username", re.IGNORECASE)
# Never uploaded: checkpoints (optimizer state), the W&B run folder, pickles (training_args.bin) and local records.
PUSH_IGNORE = ["checkpoint-*", ".checkpoint-staging/*", "wandb/*", "*.pt", "*.pth", "*.bin", "run_recipe.json"]

CARD_TEMPLATE = """---
{front_matter}library_name: {library}
tags: [{family_tag}, phi3v-recipe, trl, sft, vision-language]
---

# {title}

{what} from {base_link} with phi3v-recipe (TRL `SFTTrainer`, loss on the assistant's answers only).

- Dataset: `{dataset}`
- Recipe: `{recipe}`
- Task: {task}
- Base revision: {revision}
- Trained with: {versions}

## Metrics

{metrics}

## Usage

phi3v-recipe is not on PyPI: install it from its source folder (`pip install .`, or `make setup` there), then:

```bash
python -m phi3v_recipe.predict --adapter {repo_or_dir} --image product.jpg
```
{usage}"""


def versions() -> str:
    """The library versions a model was trained with, as the card states them."""
    from importlib.metadata import version

    return ", ".join(f"{name} {version(name)}" for name in ("transformers", "peft", "trl", "torch"))


def is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a Hub repo id (``owner/name``) rather than a local folder."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not Path(name).exists() and not name.startswith((".", "~"))


def task_description(recipe) -> str:
    """One line on what the model was trained to answer."""
    if recipe.data_format == "template":
        return f'the user turn is the image(s) + "{recipe.question}"; the answer is `{recipe.answer_template}`.'
    return f"{recipe.data_format} conversations (every assistant turn trained), scored by {recipe.scoring()}."


class PushNotReady(UserError):
    """push_to_hub was asked for but cannot succeed; raised before any model is loaded."""


@cache
def hub_unreachable() -> str | None:
    """Why the Hub cannot be reached now (offline mode, no network), or None; one quick request, no retries."""
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1"
    import httpx

    try:
        httpx.head(constants.ENDPOINT, timeout=5, follow_redirects=True)
    except httpx.HTTPError as err:
        return f"{type(err).__name__}: {err}"
    return None


def go_offline() -> None:
    """Read everything from the local cache from now on (what HF_HUB_OFFLINE=1 does), for this process and its
    children."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        sys.modules["datasets"].config.HF_HUB_OFFLINE = True


def ensure_available(
    name: str, what: str, filenames=("config.json",), repo_type: str = "model", revision: str | None = None
) -> None:
    """A local folder, or a Hub repo (at ``revision``) that is cached or can be downloaded; otherwise a UserError
    that names it and says how to get it. A cached repo is read offline when the Hub cannot be reached."""
    if Path(name).expanduser().is_dir():
        return
    if not HUB_ID.match(name):
        raise UserError(f"The {what} {name!r} is not a folder here, nor a Hub id (owner/name).")
    cached = any(
        isinstance(try_to_load_from_cache(name, f, revision=revision, repo_type=repo_type), str) for f in filenames
    )
    why = hub_unreachable()
    if why is None or cached:
        if why is not None and not constants.HF_HUB_OFFLINE:
            print(f"The Hub cannot be reached ({why}): using the cached copy of {name}.")
            go_offline()
        return
    fetch = f"hf download {name}" + (" --repo-type dataset" if repo_type == "dataset" else "")
    fetch += f" --revision {revision}" if revision not in (None, "main") else ""
    raise UserError(
        f"The {what} {name!r} is not a local folder and not in the Hugging Face cache ({constants.HF_HUB_CACHE}), "
        f"and the Hub cannot be reached ({why}). If it is a Hub id, fetch it once where the Hub is reachable "
        f"({fetch}) and use that cache here; if it is a folder, it is not at {Path(name).resolve()}: give its path "
        "from where you run, or an absolute one"
        + ("; the tiny demo model is made by `make tiny`." if what == "model" else ".")
    )


def check_push_ready(hub_model_id: str | None, hub_token: str | None, before_training: bool = True) -> str:
    """Return the token to push with, or raise PushNotReady with the fix. When the Hub can be reached, the token
    must be valid, allowed to write, and its owner allowed to write to the repo's namespace. ``before_training``
    False: the check of `phi3v-recipe push`, whose flag is --repo_id and which has no push_to_hub to turn off."""
    flag = "--hub_model_id" if before_training else "--repo_id"
    keep_local = ", or set push_to_hub: false to keep the result local" if before_training else ""
    if not hub_model_id:
        raise PushNotReady(
            "push_to_hub is true but hub_model_id is not set. Pass --hub_model_id your-hf-name/repo-name, "
            "or set push_to_hub: false."
        )
    if not HUB_ID.match(hub_model_id) or PLACEHOLDER.search(hub_model_id):
        raise PushNotReady(
            f"{flag[2:]}={hub_model_id!r} is a placeholder or not a Hub repo id (owner/name). Pass "
            f"{flag} your-hf-name/repo-name" + (", or set push_to_hub: false." if before_training else ".")
        )
    token = hub_token or get_token()
    if not token:
        raise PushNotReady(
            f"No Hugging Face token was found, so nothing can be pushed to {hub_model_id}. Run `hf auth login`, "
            f"or export HF_TOKEN with a write token (docker: -e HF_TOKEN){keep_local}."
        )
    why = hub_unreachable()
    if why is not None:
        print(f"The Hub cannot be reached ({why}): the token is not checked now; the push runs after training.")
        return token
    from huggingface_hub.errors import HfHubHTTPError

    try:
        me = HfApi().whoami(token=token)
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status == 401:
            raise PushNotReady(
                "The Hugging Face token is not valid (401): log in again with `hf auth login`."
            ) from None
        raise
    role = me.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise PushNotReady("The Hugging Face token is read-only: make a write token and log in with it.")
    namespace = hub_model_id.split("/")[0]
    allowed = {me.get("name")} | {org.get("name") for org in me.get("orgs", [])}
    if namespace not in allowed:
        raise PushNotReady(
            f"The token belongs to {me.get('name')!r}, who cannot write to {namespace!r} (their namespaces: "
            f"{', '.join(sorted(n for n in allowed if n))}). Use hub_model_id {me.get('name')}/<repo>."
        )
    return token


def format_metrics(metrics: dict) -> str:
    rows = [(k, v) for k, v in sorted(metrics.items()) if v is not None]
    if not rows:
        return "No evaluation was run."
    body = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows)
    return "| metric | value |\n|---|---|\n" + body


def write_model_card(
    out_dir: str | Path,
    base_model: str,
    recipe_path: str,
    recipe,
    metrics: dict,
    repo_or_dir: str,
    adapter: bool,
    revision: str | None = None,
    family=None,
):
    """Write README.md (the model card) and metrics.json into ``out_dir``: an adapter (PEFT) or a full model of a
    model family (``families/``; Phi-3-Vision's by default)."""
    if family is None:
        from .families import phi3v as family
    out = Path(out_dir)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    hub = is_hub_id(base_model)
    card = CARD_TEMPLATE.format(
        family_tag=family.MODEL_TYPE,
        title=Path(repo_or_dir).name,
        library="peft" if adapter else "transformers",
        what="A LoRA adapter trained" if adapter else "Fully fine-tuned",
        usage=family.card_usage(base_model, repo_or_dir, adapter, revision),
        front_matter=f"base_model: {base_model}\n" if hub else "",
        base_link=f"[`{base_model}`](https://huggingface.co/{base_model})" if hub else f"`{base_model}`",
        base_model=base_model,
        dataset=recipe.dataset,
        recipe=recipe_path,
        task=task_description(recipe),
        metrics=format_metrics(metrics),
        repo_or_dir=repo_or_dir,
        revision=(
            "none (a local folder)"
            if not hub
            else f"`{revision}`"
            if revision not in (None, "main")
            else "`main`, a branch (set model_revision to a commit to pin the base)"
        ),
        versions=versions(),
    )
    path = out / "README.md"
    path.write_text(card)
    return path


def retry_command(out_dir: str | Path, repo_id: str, private: bool, repo_type: str = "model") -> str:
    command = f"python -m phi3v_recipe.hub push {out_dir} --repo_id {repo_id}" + (" --private" if private else "")
    return command + (f" --repo_type {repo_type}" if repo_type != "model" else "")


class PushFailed(UserError):
    """The upload failed after training; the output folder is kept and the message says how to retry."""


def push_folder(
    out_dir: str | Path, repo_id: str, token: str | None = None, private: bool = False, repo_type: str = "model"
) -> str:
    """Upload ``out_dir`` to ``repo_id`` (checkpoints, W&B files and pickles left out). On failure the folder is
    kept and PushFailed says how to retry."""
    try:
        api = HfApi(token=token)
        extra = {"space_sdk": "gradio"} if repo_type == "space" else {}
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type, **extra)
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type=repo_type,
            folder_path=str(out_dir),
            ignore_patterns=PUSH_IGNORE,
            commit_message=f"Upload {'Space' if repo_type == 'space' else 'model'} made with phi3v-recipe",
        )
    except Exception as err:  # any failure: the local result is what matters now
        raise PushFailed(
            f"Push to {repo_id} failed ({type(err).__name__}: {err}). The trained adapter is kept in {out_dir}; "
            f"retry with: {retry_command(out_dir, repo_id, private, repo_type)}"
        ) from None
    print(f"Pushed {out_dir} to https://huggingface.co/{'spaces/' if repo_type == 'space' else ''}{repo_id}")
    return str(info)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Push a trained output folder to the Hugging Face Hub.")
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="upload an output folder (adapter, processor, model card)")
    push.add_argument("out_dir")
    push.add_argument("--repo_id", required=True, help="owner/name of the repo to push to")
    push.add_argument("--private", action="store_true")
    push.add_argument(
        "--repo_type",
        choices=["model", "space"],
        default="model",
        help="model: a training run's output; space: a folder written by `phi3v-recipe app --space`",
    )
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    if args.repo_type == "space":
        if not (out / "app.py").is_file() or not (out / "README.md").is_file():
            state = "does not exist" if not out.is_dir() else "holds no app.py and README.md"
            raise UserError(
                f"{out} {state}: not a Space folder. Write one with: phi3v-recipe app --adapter ... --space {out}"
            )
    else:
        weights = [name for name in ("adapter_model.safetensors", "model.safetensors") if (out / name).is_file()]
        if not out.is_dir() or not weights:
            state = "does not exist" if not out.is_dir() else "holds no adapter_model.safetensors or model.safetensors"
            raise UserError(f"{out} {state}: nothing to push. Give the output_dir of a finished training run.")
    token = check_push_ready(args.repo_id, None, before_training=False)
    push_folder(out, args.repo_id, token, args.private, args.repo_type)


if __name__ == "__main__":
    from .errors import run

    run(main)
