"""A conversational stand-in in TRL's format: ``messages`` (typed content) + ``images``, multi-turn, one or two images.

Writes ``OUT/images/*.png`` and ``OUT/messages.jsonl``. Each picture is one coloured shape; the user asks about its
colour, then (second turn) its kind, or about the colours of two pictures in turn.
"""

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm import tqdm

from .nlvr2 import COLOURS, SHAPES, put_shape


def draw_shape(colour: str, shape: str, rng: random.Random) -> Image.Image:
    size = rng.choice([160, 224, 256])
    image = Image.new("RGB", (size, size), (245, 245, 240))
    draw = ImageDraw.Draw(image)
    c = size // 2 + rng.randint(-10, 10)
    put_shape(draw, shape, colour, c, c, size // 3)
    return image


def say(role: str, *items) -> dict:
    return {
        "role": role,
        "content": [{"type": "image"} if item is None else {"type": "text", "text": item} for item in items],
    }


def write_messages_set(out_dir: str | Path, rows: int = 300, seed: int = 0) -> Path:
    """Write ``rows`` conversations and messages.jsonl; returns the JSONL path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    path = out / "messages.jsonl"
    with path.open("w") as f:
        for i in tqdm(range(rows), desc="Drawing conversations", unit="row"):
            pictures = [(rng.choice(list(COLOURS)), rng.choice(SHAPES)) for _ in range(1 + (i % 3 == 2))]
            images = []
            for n, (colour, shape) in enumerate(pictures):
                name = Path("images") / f"MSG{seed:03d}{i:05d}-{n}.png"
                draw_shape(colour, shape, random.Random(f"{seed}-{i}-{n}")).save(out / name)
                images.append(name.as_posix())
            if len(pictures) == 1:
                ((colour, shape),) = pictures
                messages = [
                    say("user", None, "What colour is the shape?"),
                    say("assistant", colour.capitalize()),
                    say("user", "And what kind of shape is it?"),
                    say("assistant", f"A {shape}"),
                ]
            else:
                messages = [
                    say("user", None, None, "What colour is the shape in the first picture?"),
                    say("assistant", pictures[0][0].capitalize()),
                    say("user", "And in the second picture?"),
                    say("assistant", pictures[1][0].capitalize()),
                ]
            f.write(json.dumps({"id": f"MSG{seed:03d}{i:05d}", "messages": messages, "images": images}) + "\n")
    return path
