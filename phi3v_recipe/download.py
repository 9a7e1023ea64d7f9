"""Fetch product images by URL into a local cache, robustly, and write a dataset as images + CSV.

    python -m phi3v_recipe.download --dataset DBQ/Burberry.Product.prices.United.States --out data/burberry

Concurrent downloads with timeouts, retries with exponential back-off (not for 4xx answers), a size limit and
http(s) URLs only. Each image is stored as ``CACHE/<id><ext>`` (written atomically), so a re-run fetches nothing
twice and an interrupted run continues where it stopped. Rows whose image cannot be had are skipped, counted and
listed in ``failed.csv`` beside the output CSV.
"""

import argparse
import csv
import io
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

USER_AGENT = "phi3v-recipe/0.1 (+https://github.com/) image fetcher"
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}


@dataclass
class FetchSettings:
    workers: int = 16
    timeout: float = 10.0
    retries: int = 3
    backoff: float = 0.5  # seconds before the first retry, doubled at each further one
    max_bytes: int = 20 * 1024 * 1024


class FetchError(Exception):
    """An image that cannot be had; the message is the reason recorded for the row."""


def safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(key))


def cached_path(cache_dir: Path, key: str) -> Path | None:
    matches = sorted(cache_dir.glob(f"{safe_name(key)}.*"))
    return next((p for p in matches if p.suffix != ".part"), None)


def _download(url: str, settings: FetchSettings) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=settings.timeout) as response:
        data = response.read(settings.max_bytes + 1)
    if len(data) > settings.max_bytes:
        raise FetchError(f"larger than the {settings.max_bytes}-byte limit")
    return data


def fetch_one(url: str, key: str, cache_dir: Path, settings: FetchSettings) -> Path:
    """Return the cached image for ``key``, downloading ``url`` first if needed. Raises FetchError."""
    if (hit := cached_path(cache_dir, key)) is not None:
        return hit
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        raise FetchError(f"not an http(s) URL: {url!r}")
    for attempt in range(settings.retries + 1):
        try:
            data = _download(url, settings)
            break
        except urllib.error.HTTPError as err:
            if 400 <= err.code < 500 or attempt == settings.retries:
                raise FetchError(f"HTTP {err.code}") from err
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            if attempt == settings.retries:
                reason = getattr(err, "reason", err)
                raise FetchError(f"network error after {attempt + 1} tries: {reason}") from err
        time.sleep(settings.backoff * 2**attempt)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            image.verify()
    except Exception as err:
        raise FetchError(f"not a readable image ({type(err).__name__})") from err
    path = cache_dir / f"{safe_name(key)}{EXTENSIONS.get(image_format, '.img')}"
    partial = path.with_name(path.name + ".part")
    partial.write_bytes(data)
    partial.replace(path)  # atomic: an interrupted run never leaves a half-written image behind
    return path


def fetch_images(
    rows: list[dict], url_column: str, id_column: str, cache_dir: str | Path, settings: FetchSettings | None = None
) -> tuple[dict[str, Path], dict[str, str]]:
    """Fetch every row's image. Returns ``({id: local path}, {id: failure reason})``."""
    settings = settings or FetchSettings()
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    paths, failures = {}, {}

    def work(row):
        key = str(row[id_column])
        try:
            return key, fetch_one(row[url_column], key, cache, settings), None
        except FetchError as err:
            return key, None, str(err)

    with ThreadPoolExecutor(max_workers=settings.workers) as pool:
        for key, path, reason in tqdm(pool.map(work, rows), total=len(rows), desc="Fetching images", unit="img"):
            if path is None:
                failures[key] = reason
            else:
                paths[key] = path
    return paths, failures


def write_local_copy(
    rows: list[dict], url_column: str, id_column: str, out_dir: str | Path, settings: FetchSettings | None = None
) -> Path:
    """Fetch the images into ``OUT/images`` and write ``OUT/<name>.csv`` (with `local_image_path`, relative to the
    CSV) for the rows that have an image, plus ``OUT/failed.csv`` for the rows that do not. Returns the CSV path."""
    out = Path(out_dir)
    paths, failures = fetch_images(rows, url_column, id_column, out / "images", settings)
    columns = list(rows[0]) + ["local_image_path"] if rows else ["local_image_path"]
    csv_path = out / "data.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            if (path := paths.get(str(row[id_column]))) is not None:
                writer.writerow({**row, "local_image_path": path.relative_to(out).as_posix()})
    with (out / "failed.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([id_column, url_column, "reason"])
        for row in rows:
            if (reason := failures.get(str(row[id_column]))) is not None:
                writer.writerow([row[id_column], row[url_column], reason])
    print(f"{len(paths)} rows with images written to {csv_path}; {len(failures)} skipped (see {out / 'failed.csv'})")
    return csv_path


def main() -> None:
    parser = argparse.ArgumentParser(description="Download a dataset's images and write it as images + CSV.")
    parser.add_argument("--dataset", default="DBQ/Burberry.Product.prices.United.States", help="Hub id or CSV/JSONL")
    parser.add_argument("--split", default="train")
    parser.add_argument("--url-column", default="imageurl")
    parser.add_argument("--id-column", default="product_code")
    parser.add_argument("--out", default="data/burberry")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows")
    parser.add_argument("--workers", type=int, default=FetchSettings.workers)
    parser.add_argument("--timeout", type=float, default=FetchSettings.timeout)
    parser.add_argument("--retries", type=int, default=FetchSettings.retries)
    parser.add_argument("--max-bytes", type=int, default=FetchSettings.max_bytes)
    args = parser.parse_args()

    from .data import load_table

    table = load_table(args.dataset, split=args.split)
    if args.limit is not None:
        table = table.select(range(min(args.limit, len(table))))
    settings = FetchSettings(args.workers, args.timeout, args.retries, max_bytes=args.max_bytes)
    write_local_copy(table.to_list(), args.url_column, args.id_column, args.out, settings)


if __name__ == "__main__":
    main()
