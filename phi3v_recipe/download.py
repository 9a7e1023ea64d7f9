"""Fetch images by URL into a local cache, robustly, and write a dataset as images + CSV.

    python -m phi3v_recipe.download --dataset DBQ/Burberry.Product.prices.United.States --out data/burberry

On httpx (the HTTP client huggingface_hub uses): concurrent downloads, retries with exponential back-off (for
network errors, 429 and 5xx answers only), an overall deadline per image (a server that trickles bytes cannot hold
a worker), a size limit, and http(s) only, redirects included. No URL can stop a run: whatever goes wrong with one
(a malformed URL, any HTTP error, bytes that are not an image) is that row's counted failure, listed in
``failed.csv``.

The cache is keyed by a hash of the URL, so a row can only ever get the image its own URL names, whatever its id
(duplicate, empty, or a prefix of another). Files are written under a unique temporary name and renamed into place
once they decode as an image, so an interrupted run, a transfer that ended early or two runs into the same folder
at once never leave a bad image behind; a cached file is decoded again before it is trusted.
"""

import csv
import hashlib
import io
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from .errors import ArgumentParser, UserError, run
from .files import is_disk_full, write_atomically

USER_AGENT = "phi3v-recipe/0.1 image fetcher"
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}


@dataclass
class FetchSettings:
    workers: int = 16
    timeout: float = 10.0  # to connect, and between two chunks of an answer
    deadline: float = 60.0  # for the whole download of one image, retries excluded
    retries: int = 3
    backoff: float = 0.5  # seconds before the first retry, doubled at each further one
    max_bytes: int = 20 * 1024 * 1024


class FetchError(Exception):
    """An image that cannot be had; the message is the reason recorded for the row."""


class Retry(Exception):
    """A failure worth another try (network errors, 429, 5xx)."""


def cache_key(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def decodes(data: bytes) -> str | None:
    """The image format of ``data`` if it fully decodes as an image, else None."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.format
    except Exception:
        return None


def cached_path(cache_dir: Path, url: str) -> Path | None:
    """The cached image of this URL, if there is one that still decodes (a broken one is removed)."""
    key = cache_key(url)
    for extension in {*EXTENSIONS.values(), ".img"}:
        path = cache_dir / f"{key}{extension}"
        if path.is_file():
            if decodes(path.read_bytes()) is not None:
                return path
            path.unlink(missing_ok=True)
    return None


def _download(client, url: str, settings: FetchSettings) -> bytes:
    import httpx

    start = time.monotonic()
    try:
        with client.stream("GET", url) as response:
            if response.status_code == 429 or response.status_code >= 500:
                raise Retry(f"HTTP {response.status_code}")
            if response.status_code >= 400:
                raise FetchError(f"HTTP {response.status_code}")
            if response.url.scheme not in ("http", "https"):
                raise FetchError(f"redirected to a non-http(s) URL: {response.url}")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > settings.max_bytes:
                    raise FetchError(f"larger than the {settings.max_bytes}-byte limit")
                if time.monotonic() - start > settings.deadline:
                    raise Retry(f"took longer than the {settings.deadline:g}s deadline")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.UnsupportedProtocol as err:
        raise FetchError(f"not an http(s) URL (or redirected to one that is not): {err}") from None
    except (httpx.InvalidURL, httpx.TooManyRedirects) as err:
        raise FetchError(f"bad URL: {err}") from None
    except httpx.HTTPError as err:  # timeouts, refused or dropped connections, bodies cut short
        raise Retry(f"{type(err).__name__}: {err}") from None


def fetch_one(client, url, cache_dir: Path, settings: FetchSettings) -> Path:
    """Return the cached image for ``url``, downloading it first if needed. Raises FetchError with the reason."""
    if not isinstance(url, str) or not url.strip():
        raise FetchError(f"no URL ({url!r})")
    url = url.strip()
    if not url.lower().startswith(("http://", "https://")):
        raise FetchError(f"not an http(s) URL: {url!r}")
    if (hit := cached_path(cache_dir, url)) is not None:
        return hit
    for attempt in range(settings.retries + 1):
        try:
            data = _download(client, url, settings)
            break
        except Retry as err:
            if attempt == settings.retries:
                raise FetchError(f"failed after {attempt + 1} tries: {err}") from None
        time.sleep(settings.backoff * 2**attempt)
    image_format = decodes(data)
    if image_format is None:
        raise FetchError("not a readable image (or cut short)")
    return write_atomically(cache_dir / f"{cache_key(url)}{EXTENSIONS.get(image_format, '.img')}", data)


def fetch_images(
    urls: list, cache_dir: str | Path, settings: FetchSettings | None = None, desc: str = "Fetching images"
) -> list[Path | FetchError]:
    """Fetch every URL (one per row). Returns, per row, the local image path or the FetchError that says why not."""
    import httpx

    settings = settings or FetchSettings()
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    timeout = httpx.Timeout(settings.timeout)
    headers = {"User-Agent": USER_AGENT}
    with httpx.Client(timeout=timeout, follow_redirects=True, headers=headers, max_redirects=5) as client:

        def work(url):
            try:
                return fetch_one(client, url, cache, settings)
            except FetchError as err:
                return err
            except Exception as err:  # one URL never stops the run: anything else is that row's failure too,
                if is_disk_full(err):  # except a full disk, which would fail every row after it
                    raise
                return FetchError(f"{type(err).__name__}: {err}")

        with ThreadPoolExecutor(max_workers=settings.workers) as pool:
            return list(tqdm(pool.map(work, urls), total=len(urls), desc=desc, unit="img"))


def write_csv(path: Path, columns: list[str], rows: list) -> None:
    """Write a CSV whole (a reader, or a second run, never sees half a file)."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(columns)
    writer.writerows(rows)
    write_atomically(path, text.getvalue())


def write_local_copy(
    rows: list[dict], url_column: str, id_column: str, out_dir: str | Path, settings: FetchSettings | None = None
) -> Path:
    """Fetch the images into ``OUT/images`` and write ``OUT/data.csv`` (with `local_image_path`, relative to the
    CSV) for the rows that have an image, plus ``OUT/failed.csv`` for the rows that do not. Returns the CSV path."""
    out = Path(out_dir)
    columns = list(rows[0]) if rows else []
    for name in (url_column, id_column):
        if rows and name not in columns:
            raise UserError(f"The dataset has no column {name!r}; its columns are {columns}.")
    results = fetch_images([row[url_column] for row in rows], out / "images", settings)
    kept = [[*row.values(), r.relative_to(out).as_posix()] for row, r in zip(rows, results) if isinstance(r, Path)]
    failed = [[row[id_column], row[url_column], str(r)] for row, r in zip(rows, results) if isinstance(r, FetchError)]
    write_csv(out / "data.csv", [*columns, "local_image_path"], kept)
    write_csv(out / "failed.csv", [id_column, url_column, "reason"], failed)
    print(
        f"{len(kept)} rows with images written to {out / 'data.csv'}; {len(failed)} skipped (see {out / 'failed.csv'})"
    )
    return out / "data.csv"


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Download a dataset's images and write it as images + CSV.")
    parser.add_argument("--dataset", default="DBQ/Burberry.Product.prices.United.States", help="Hub id or CSV/JSONL")
    parser.add_argument("--split", default="train")
    parser.add_argument("--url_column", default="imageurl")
    parser.add_argument("--id_column", default="product_code")
    parser.add_argument("--out", default="data/burberry")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows")
    parser.add_argument("--workers", type=int, default=FetchSettings.workers)
    parser.add_argument("--timeout", type=float, default=FetchSettings.timeout)
    parser.add_argument("--deadline", type=float, default=FetchSettings.deadline)
    parser.add_argument("--retries", type=int, default=FetchSettings.retries)
    parser.add_argument("--max_bytes", type=int, default=FetchSettings.max_bytes)
    args = parser.parse_args(argv)

    from .arguments import DataArguments
    from .data import load_table

    table, _ = load_table(DataArguments(dataset=args.dataset, dataset_split=args.split))
    if args.limit is not None:
        table = table.select(range(min(args.limit, len(table))))
    settings = FetchSettings(args.workers, args.timeout, args.deadline, args.retries, max_bytes=args.max_bytes)
    write_local_copy(table.to_list(), args.url_column, args.id_column, args.out, settings)


if __name__ == "__main__":
    run(main)
