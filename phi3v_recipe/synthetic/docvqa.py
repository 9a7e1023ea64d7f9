"""A document-VQA stand-in: drawn documents with rendered text, a question per row and several reference answers.

Writes ``OUT/images/*.png`` and ``OUT/docvqa.jsonl`` with DocumentVQA's columns (``question``, ``answers``, ``image``)
plus ``id`` and ``question_type``. Each document has a type (its title, on a header band of the type's colour), a
status stamp (PAID / DUE / VOID, each in its own colour), an issuer and lines of body text. The questions ask for the
type, the stamp or the issuer; all three are printed on the page, the first two also carry a colour cue.
"""

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

TYPES = {"Invoice": (40, 90, 170), "Receipt": (30, 140, 80), "Letter": (120, 60, 150), "Memo": (200, 120, 30)}
STAMPS = {"Paid": (20, 150, 60), "Due": (220, 140, 0), "Void": (200, 30, 30)}
ISSUERS = ["Acme Ltd", "Globex", "Initech", "Umbrella", "Hooli"]
QUESTIONS = {
    "type": "What type of document is this?",
    "stamp": "What does the stamp on the document say?",
    "issuer": "Which company issued this document?",
}
WORDS = "total amount date order item price tax due account number reference payment service".split()


def references(kind: str, value: str) -> list[str]:
    """The accepted answers, the first being the one trained (as DocVQA lists several per question)."""
    if kind == "type":
        article = "an" if value[0] in "AEIOU" else "a"
        return [value, f"{article} {value.lower()}", value.upper()]
    if kind == "stamp":
        return [value, value.upper()]
    return [value, value.upper(), f"{value} Inc"]


def draw_document(doc_type: str, stamp: str, issuer: str, rng: random.Random) -> Image.Image:
    width, height = rng.choice([(336, 448), (360, 480), (420, 520)])
    page = Image.new("RGB", (width, height), (250, 250, 246))
    draw = ImageDraw.Draw(page)
    draw.rectangle([0, 0, width, 64], fill=TYPES[doc_type])
    draw.text((16, 12), doc_type.upper(), fill=(255, 255, 255), font=ImageFont.load_default(size=34))
    draw.text((16, 76), issuer, fill=(30, 30, 30), font=ImageFont.load_default(size=22))
    small = ImageFont.load_default(size=13)
    y = 112
    while y < height - 40:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6)))
        draw.text((16, y), f"{line} {rng.randint(1, 999)}", fill=(90, 90, 90), font=small)
        y += 22
    colour = STAMPS[stamp]
    x0, y0 = width - 150 + rng.randint(-10, 10), height - 150 + rng.randint(-10, 10)
    draw.rectangle([x0, y0, x0 + 120, y0 + 56], fill=(250, 250, 246), outline=colour, width=5)
    draw.text((x0 + 14, y0 + 6), stamp.upper(), fill=colour, font=ImageFont.load_default(size=30))
    return page


def write_docvqa_set(out_dir: str | Path, rows: int = 400, seed: int = 0) -> Path:
    """Write ``rows`` documents and docvqa.jsonl (one question per document); returns the JSONL path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    path = out / "docvqa.jsonl"
    with path.open("w") as f:
        for i in tqdm(range(rows), desc="Drawing documents", unit="doc"):
            doc = {"type": rng.choice(list(TYPES)), "stamp": rng.choice(list(STAMPS)), "issuer": rng.choice(ISSUERS)}
            kind = rng.choice(list(QUESTIONS))
            image = Path("images") / f"DOC{seed:03d}{i:05d}.png"
            draw_document(doc["type"], doc["stamp"], doc["issuer"], random.Random(f"{seed}-{i}")).save(out / image)
            record = {
                "id": f"DOC{seed:03d}{i:05d}",
                "image": image.as_posix(),
                "question": QUESTIONS[kind],
                "question_type": kind,
                "answers": references(kind, doc[kind]),
            }
            f.write(json.dumps(record) + "\n")
    return path
