"""An NLVR2-like stand-in: two images of coloured shapes and true/false statements about them, two turns per pair.

Writes ``OUT/images/*.png`` and ``OUT/nlvr2.jsonl`` in the_cauldron's layout (``images``: the two pictures, ``texts``:
a list of ``user`` / ``assistant`` turns), the layout of the official NLVR2 fine-tuning's data. Statements compare the
number, colour and kind of the shapes in the left and right images; the answers are ``True`` or ``False``, balanced.
"""

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm import tqdm

COLOURS = {"red": (200, 40, 40), "blue": (40, 70, 200), "green": (40, 160, 60), "yellow": (230, 200, 30)}
SHAPES = ["circle", "square", "triangle"]


def put_shape(draw: ImageDraw.ImageDraw, shape: str, colour: str, cx: int, cy: int, r: int) -> None:
    """Draw one filled shape of radius ``r`` centred on (cx, cy)."""
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=COLOURS[colour])


def draw_panel(count: int, colour: str, shape: str, rng: random.Random) -> Image.Image:
    size = rng.choice([224, 256, 288])
    image = Image.new("RGB", (size, size), (240, 240, 235))
    draw = ImageDraw.Draw(image)
    cells = rng.sample(range(9), count)  # a 3x3 grid, so the shapes never overlap
    step = size // 3
    for cell in cells:
        cx, cy = (cell % 3) * step + step // 2, (cell // 3) * step + step // 2
        put_shape(draw, shape, colour, cx, cy, step // 3)
    return image


def statement(left: dict, right: dict, rng: random.Random) -> tuple[str, bool]:
    """A statement about the pair and whether it holds."""
    kind = rng.choice(["more", "colour", "count", "shape"])
    if kind == "more":
        return "The left image contains more shapes than the right image.", left["count"] > right["count"]
    if kind == "colour":
        colour = rng.choice([left["colour"], right["colour"], rng.choice(list(COLOURS))])
        return f"Both images contain {colour} shapes.", left["colour"] == right["colour"] == colour
    if kind == "count":
        n = rng.choice([right["count"], rng.randint(1, 4)])
        return f"The right image contains exactly {n} shape{'s' * (n != 1)}.", right["count"] == n
    shape = rng.choice([left["shape"], rng.choice(SHAPES)])
    return f"The left image shows {shape}s.", left["shape"] == shape


def write_nlvr2_set(out_dir: str | Path, rows: int = 300, seed: int = 0) -> Path:
    """Write ``rows`` image pairs with two statements each; returns the JSONL path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    path = out / "nlvr2.jsonl"
    with path.open("w") as f:
        for i in tqdm(range(rows), desc="Drawing image pairs", unit="pair"):
            panels = [
                {"count": rng.randint(1, 4), "colour": rng.choice(list(COLOURS)), "shape": rng.choice(SHAPES)}
                for _ in range(2)
            ]
            images = []
            for side, panel in zip(("left", "right"), panels):
                name = Path("images") / f"PAIR{seed:03d}{i:05d}-{side}.png"
                draw_panel(**panel, rng=random.Random(f"{seed}-{i}-{side}")).save(out / name)
                images.append(name.as_posix())
            texts = []
            for _ in range(2):
                wanted = rng.random() < 0.5  # balance True and False
                for _ in range(50):
                    text, truth = statement(*panels, rng)
                    if truth == wanted:
                        break
                texts.append({"user": f"{text} True or False?", "assistant": str(truth)})
            f.write(json.dumps({"id": f"PAIR{seed:03d}{i:05d}", "images": images, "texts": texts}) + "\n")
    return path
