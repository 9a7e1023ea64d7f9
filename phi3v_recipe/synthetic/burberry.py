"""A synthetic Burberry-like product set, drawn offline and deterministically.

Writes ``OUT/images/*.png`` and ``OUT/burberry.csv`` with the columns of DBQ/Burberry.Product.prices.United.States
(`product_code`, `title`, `category3_code`, `full_price`, `imageurl`, ...) plus `local_image_path`. The answer is
learnable from the picture: the category is the product's silhouette, the price follows the material (drawn as a
texture: plain canvas, smooth leather, the house check, a monogram, cashmere knit), the size (how much of the
frame the product fills) and the colour; the title names those attributes.
"""

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm import tqdm

# category3_code -> (silhouette drawer name, base price in USD, product names)
CATEGORIES = {
    "BAGS": ("bag", 1290, ["Tote", "Crossbody Bag"]),
    "SHOES": ("shoe", 690, ["Sneakers", "Ankle Boots"]),
    "SCARVES": ("scarf", 450, ["Scarf", "Stole"]),
    "COATS": ("coat", 2190, ["Trench Coat", "Car Coat"]),
    "HATS": ("hat", 390, ["Bucket Hat", "Baseball Cap"]),
    "WALLETS": ("wallet", 450, ["Wallet", "Card Case"]),
}
MATERIALS = {"Canvas": 0.6, "Leather": 1.0, "Check": 1.3, "Monogram": 1.6, "Cashmere": 2.0}
COLOURS = {
    "Black": (25, 25, 25),
    "Beige": (214, 196, 160),
    "Navy": (30, 40, 90),
    "Red": (170, 30, 40),
    "Olive": (100, 110, 50),
    "Camel": (180, 130, 70),
}
SIZES = {"Small": 0.55, "Medium": 0.72, "Large": 0.9}
SIZE_PRICE = {"Small": 0.8, "Medium": 1.0, "Large": 1.25}
# Landscape, portrait, square, wide, panoramic and tall frames: different crop grids, so different token counts.
CANVASES = [(448, 336), (336, 448), (400, 400), (512, 288), (600, 200), (240, 480)]


@dataclass(frozen=True)
class Product:
    category: str
    variant: int
    material: str
    colour: str
    size: str

    @property
    def title(self) -> str:
        return f"{self.size} {self.colour} {self.material} {CATEGORIES[self.category][2][self.variant]}"

    @property
    def price(self) -> int:
        """Base price x material x size, then a colour premium, rounded to a price ending in 90."""
        base = CATEGORIES[self.category][1] * MATERIALS[self.material] * SIZE_PRICE[self.size]
        base *= 1.1 if self.colour in ("Red", "Camel") else 1.0
        return max(int(round(base / 100.0)) * 100 - 10, 90)


def _texture(draw: ImageDraw.ImageDraw, box, material: str, colour, rng: random.Random) -> None:
    """Fill ``box`` with the material's look: the cue the price is read from."""
    x0, y0, x1, y1 = box
    dark = tuple(max(c - 60, 0) for c in colour)
    light = tuple(min(c + 70, 255) for c in colour)
    if material == "Canvas":
        draw.rectangle(box, fill=colour)
    elif material == "Leather":  # smooth vertical sheen
        for x in range(int(x0), int(x1)):
            t = (x - x0) / max(x1 - x0, 1)
            shade = tuple(int(c * (0.75 + 0.5 * t * (1 - t))) for c in colour)
            draw.line([(x, y0), (x, y1)], fill=shade)
    elif material == "Check":  # the house check: beige ground, dark and red stripes
        draw.rectangle(box, fill=(214, 196, 160))
        step = 18
        for x in range(int(x0), int(x1), step):
            draw.rectangle([x, y0, x + 4, y1], fill=dark)
        for y in range(int(y0), int(y1), step):
            draw.rectangle([x0, y, x1, y + 4], fill=dark)
        for x in range(int(x0) + 9, int(x1), step * 2):
            draw.line([(x, y0), (x, y1)], fill=(170, 30, 40), width=2)
    elif material == "Monogram":  # repeated small diamonds on the colour
        draw.rectangle(box, fill=colour)
        for y in range(int(y0) + 6, int(y1), 16):
            for x in range(int(x0) + 6 + (y // 16 % 2) * 8, int(x1), 16):
                draw.polygon([(x, y - 4), (x + 4, y), (x, y + 4), (x - 4, y)], fill=light)
    else:  # Cashmere: a fine knit of light rows with a gold trim
        draw.rectangle(box, fill=colour)
        for y in range(int(y0), int(y1), 4):
            draw.line([(x0, y), (x1, y)], fill=light if (y // 4) % 2 else dark, width=1)
        draw.rectangle(box, outline=(212, 175, 55), width=6)


def _silhouette(shape: str, variant: int, cx: float, cy: float, s: float) -> list[list[tuple[float, float]]]:
    """Polygons of the product's outline, centred at (cx, cy), of extent ``s`` pixels."""
    h = s / 2
    if shape == "bag":
        body = [(cx - h, cy - h * 0.2), (cx + h, cy - h * 0.2), (cx + h * 0.85, cy + h), (cx - h * 0.85, cy + h)]
        handle = [
            (cx - h * 0.5, cy - h * 0.2),
            (cx - h * 0.35, cy - h * (0.9 if variant == 0 else 0.5)),
            (cx + h * 0.35, cy - h * (0.9 if variant == 0 else 0.5)),
            (cx + h * 0.5, cy - h * 0.2),
            (cx + h * 0.35, cy - h * 0.2),
            (cx, cy - h * 0.6),
            (cx - h * 0.35, cy - h * 0.2),
        ]
        return [body, handle]
    if shape == "shoe":
        top = cy - h * (0.9 if variant == 1 else 0.2)
        return [
            [
                (cx - h, cy + h * 0.5),
                (cx - h, top),
                (cx - h * 0.3, top),
                (cx - h * 0.2, cy),
                (cx + h, cy + h * 0.1),
                (cx + h, cy + h * 0.5),
            ]
        ]
    if shape == "scarf":
        w = h * (0.35 if variant == 0 else 0.6)
        return [[(cx - w, cy - h), (cx + w, cy - h), (cx + w, cy + h), (cx - w, cy + h)]]
    if shape == "coat":
        hem = cy + h * (1.0 if variant == 0 else 0.5)
        return [
            [
                (cx - h * 0.3, cy - h),
                (cx + h * 0.3, cy - h),
                (cx + h, cy - h * 0.6),
                (cx + h * 0.8, cy - h * 0.1),
                (cx + h * 0.5, cy - h * 0.3),
                (cx + h * 0.55, hem),
                (cx - h * 0.55, hem),
                (cx - h * 0.5, cy - h * 0.3),
                (cx - h * 0.8, cy - h * 0.1),
                (cx - h, cy - h * 0.6),
            ]
        ]
    if shape == "hat":
        brim = [
            (cx - h, cy + h * 0.2),
            (cx + h, cy + h * 0.2),
            (cx + h * 0.9, cy + h * 0.4),
            (cx - h * 0.9, cy + h * 0.4),
        ]
        if variant == 1:  # cap: the brim sticks out to one side
            brim = [
                (cx - h * 0.6, cy + h * 0.2),
                (cx + h * 1.1, cy + h * 0.2),
                (cx + h * 1.1, cy + h * 0.35),
                (cx - h * 0.6, cy + h * 0.35),
            ]
        crown = [
            (cx - h * 0.6, cy + h * 0.2),
            (cx - h * 0.5, cy - h * 0.5),
            (cx, cy - h * 0.7),
            (cx + h * 0.5, cy - h * 0.5),
            (cx + h * 0.6, cy + h * 0.2),
        ]
        return [crown, brim]
    # wallet / card case
    w, hh = (h, h * 0.6) if variant == 0 else (h * 0.7, h * 0.45)
    return [[(cx - w, cy - hh), (cx + w, cy - hh), (cx + w, cy + hh), (cx - w, cy + hh)]]


def draw_product(product: Product, rng: random.Random) -> Image.Image:
    """Picture of the product on a light studio background, with a little jitter in position and backdrop."""
    width, height = rng.choice(CANVASES)
    grey = rng.randint(225, 250)
    image = Image.new("RGB", (width, height), (grey, grey, grey))
    extent = min(width, height) * SIZES[product.size]
    cx = width / 2 + rng.uniform(-0.05, 0.05) * width
    cy = height / 2 + rng.uniform(-0.05, 0.05) * height
    shape = CATEGORIES[product.category][0]
    mask = Image.new("L", (width, height), 0)
    mask_draw = ImageDraw.Draw(mask)
    for polygon in _silhouette(shape, product.variant, cx, cy, extent):
        mask_draw.polygon(polygon, fill=255)
    texture = Image.new("RGB", (width, height))
    _texture(ImageDraw.Draw(texture), (0, 0, width, height), product.material, COLOURS[product.colour], rng)
    image.paste(texture, (0, 0), mask)
    return image


def sample_products(rows: int, seed: int) -> list[Product]:
    rng = random.Random(seed)
    return [
        Product(
            category=rng.choice(list(CATEGORIES)),
            variant=rng.randrange(2),
            material=rng.choice(list(MATERIALS)),
            colour=rng.choice(list(COLOURS)),
            size=rng.choice(list(SIZES)),
        )
        for _ in range(rows)
    ]


CSV_COLUMNS = [
    "product_code",
    "brand",
    "category1_code",
    "category2_code",
    "category3_code",
    "title",
    "full_price",
    "price",
    "currency_code",
    "imageurl",
    "local_image_path",
]


def write_sample_set(out_dir: str | Path, rows: int = 3040, seed: int = 0) -> Path:
    """Write images + burberry.csv for ``rows`` synthetic products; returns the CSV path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    csv_path = out / "burberry.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for i, product in enumerate(tqdm(sample_products(rows, seed), desc="Drawing products", unit="img")):
            code = f"SYN{seed:03d}{i:06d}"
            image_path = Path("images") / f"{code}.png"
            draw_product(product, random.Random(f"{seed}-{i}")).save(out / image_path)
            writer.writerow(
                {
                    "product_code": code,
                    "brand": "Burberry",
                    "category1_code": "SYNTHETIC",
                    "category2_code": CATEGORIES[product.category][0].upper(),
                    "category3_code": product.category,
                    "title": product.title,
                    "full_price": f"{product.price:.1f}",
                    "price": f"{product.price:.1f}",
                    "currency_code": "USD",
                    "imageurl": "",
                    "local_image_path": image_path.as_posix(),
                }
            )
    return csv_path
