"""A video-classification stand-in: short clips as lists of drawn frames, whose motion is the label.

Writes ``OUT/images/<clip>/<n>.png`` and ``OUT/frames.jsonl`` (``id``, ``frames``: the frame files in order,
``label``). A square moves ``left``, ``right``, ``up`` or ``down`` across the frames past a still distractor: no
single frame shows the label, the sequence does (as UCF-101's actions).
"""

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm import tqdm

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
LABELS = sorted(DIRECTIONS)


def draw_clip(direction: str, frames: int, rng: random.Random) -> list[Image.Image]:
    width, height = 192, 144
    dx, dy = DIRECTIONS[direction]
    step = rng.randint(9, 13)
    x = width // 2 - dx * step * frames // 2 + rng.randint(-8, 8)
    y = height // 2 - dy * step * frames // 2 + rng.randint(-8, 8)
    colour = rng.choice([(200, 40, 40), (40, 70, 200), (40, 160, 60)])
    still = (rng.randint(10, width - 30), rng.randint(10, height - 30))
    clip = []
    for i in range(frames):
        image = Image.new("RGB", (width, height), (235, 235, 230))
        draw = ImageDraw.Draw(image)
        draw.ellipse([still[0], still[1], still[0] + 18, still[1] + 18], fill=(120, 120, 120))
        cx, cy = x + dx * step * i, y + dy * step * i
        draw.rectangle([cx - 10, cy - 10, cx + 10, cy + 10], fill=colour)
        clip.append(image)
    return clip


def write_frames_set(out_dir: str | Path, rows: int = 200, seed: int = 0, frames: int = 8) -> Path:
    """Write ``rows`` clips of ``frames`` frames each and frames.jsonl; returns the JSONL path."""
    out = Path(out_dir)
    rng = random.Random(seed)
    path = out / "frames.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i in tqdm(range(rows), desc="Drawing clips", unit="clip"):
            label = rng.choice(LABELS)
            clip_id = f"CLIP{seed:03d}{i:05d}"
            folder = Path("images") / clip_id
            (out / folder).mkdir(parents=True, exist_ok=True)
            paths = []
            for n, frame in enumerate(draw_clip(label, frames, random.Random(f"{seed}-{i}"))):
                frame.save(out / folder / f"{n}.png")
                paths.append((folder / f"{n}.png").as_posix())
            f.write(json.dumps({"id": clip_id, "frames": paths, "label": label}) + "\n")
    return path
