"""The URL fetcher against a real HTTP server on 127.0.0.1: good and bad answers, hostile URLs, slow and cut-short
transfers, redirects, the cache's keys, and two runs into one folder at once."""

import csv
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from phi3v_recipe.download import FetchError, FetchSettings, cache_key, fetch_images, write_local_copy

from .test_processor import photo


def png_bytes(width=40, height=30, seed=0):
    buffer = io.BytesIO()
    photo(width, height, seed=seed).save(buffer, format="PNG")
    return buffer.getvalue()


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that hangs up early (the size limit, the deadline) is expected here


class Server:
    """A real HTTP server on 127.0.0.1 with good images, errors, slow, trickling and cut-short answers, redirects."""

    def __init__(self):
        self.hits: list[str] = []
        self.flaky_left = 1
        routes = {
            "/good1.png": png_bytes(seed=1),
            "/good2.png": png_bytes(seed=2),
            "/good3.png": png_bytes(seed=3),
            "/corrupt.png": b"\x89PNG\r\n\x1a\n" + b"garbage" * 20,
            "/huge.png": png_bytes(1500, 1500),
        }
        redirects = {
            "/to-good.png": "/good1.png",
            "/to-ftp.png": "ftp://127.0.0.1/x.png",
            "/to-file.png": "file:///etc/passwd",
        }
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits.append(self.path)
                if self.path in redirects:
                    self.send_response(302)
                    self.send_header("Location", redirects[self.path])
                    self.end_headers()
                    return
                if self.path == "/slow.png":
                    time.sleep(1.5)
                if self.path == "/flaky.png" and server.flaky_left > 0:
                    server.flaky_left -= 1
                    self.send_error(503)
                    return
                if self.path == "/trickle.png":  # one byte at a time, forever: only a deadline stops it
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    for _ in range(200):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.05)
                    return
                if self.path == "/cut.png":  # says 4000 bytes, sends a third of an image, hangs up
                    body = routes["/good2.png"]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 3])
                    return
                body = routes.get(self.path) or (
                    routes["/good3.png"] if self.path in ("/slow.png", "/flaky.png") else None
                )
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = Server()
    yield s
    s.close()


SETTINGS = FetchSettings(workers=4, timeout=0.5, deadline=2.0, retries=2, backoff=0.05, max_bytes=200_000)


def fetch(urls, cache):
    return dict(zip(urls, fetch_images(urls, cache, SETTINGS)))


def test_fetch_keeps_good_rows_and_counts_the_rest(server, tmp_path):
    names = ["good1", "good2", "missing", "slow", "corrupt", "huge", "flaky", "to-good", "cut"]
    urls = [f"{server.url}/{name}.png" for name in names] + ["ftp://example.com/x.png"]
    results = dict(zip([*names, "ftp"], fetch_images(urls, tmp_path / "cache", SETTINGS)))

    assert sorted(name for name, r in results.items() if not isinstance(r, FetchError)) == [
        "flaky",  # a 503, then success on retry
        "good1",
        "good2",
        "to-good",  # an http redirect is followed
    ]
    assert results["good1"].read_bytes() == png_bytes(seed=1)
    assert results["to-good"].read_bytes() == png_bytes(seed=1)
    reasons = {name: str(r) for name, r in results.items() if isinstance(r, FetchError)}
    assert reasons["missing"] == "HTTP 404"
    assert reasons["slow"].startswith("failed after 3 tries: ReadTimeout")
    assert reasons["corrupt"].startswith("not a readable image")
    assert "200000-byte limit" in reasons["huge"]
    assert reasons["ftp"].startswith("not an http(s) URL")
    assert reasons["cut"].startswith("failed after 3 tries")  # a body cut short is retried, never cached
    assert server.hits.count("/missing.png") == 1  # a 4xx is not retried
    assert server.hits.count("/slow.png") == 3  # timeouts are retried (retries=2)
    assert not list((tmp_path / "cache").glob("*.part"))
    assert len(list((tmp_path / "cache").iterdir())) == 4  # good1, good2, flaky, to-good: nothing else


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1/with space.png",
        "http://127.0.0.1:1/gööd.png",
        "http://127.0.0.1:1/a\nb.png",
        "http://[::1",
        "http://",
        "https:///nohost.png",
        "htp://x.png",
        "",
        None,
        42,
        "http://exa mple.com/x.png",
    ],
)
def test_no_url_can_stop_a_run(url, tmp_path):
    [result] = fetch_images([url], tmp_path / "cache", FetchSettings(retries=0, timeout=0.5))
    assert isinstance(result, FetchError) and str(result)


def test_redirects_must_stay_http(server, tmp_path):
    results = fetch([f"{server.url}/to-ftp.png", f"{server.url}/to-file.png"], tmp_path / "cache")
    for result in results.values():
        assert isinstance(result, FetchError) and "http(s)" in str(result)


def test_a_trickling_server_meets_the_deadline(server, tmp_path):
    settings = FetchSettings(workers=1, timeout=1.0, deadline=1.0, retries=0)
    [result] = fetch_images([f"{server.url}/trickle.png"], tmp_path / "cache", settings)
    assert isinstance(result, FetchError) and "deadline" in str(result)  # cut at the deadline, not after the trickle


def test_second_run_fetches_nothing_and_a_broken_cached_file_is_fetched_again(server, tmp_path):
    urls = [f"{server.url}/good1.png", f"{server.url}/good2.png"]
    first = fetch_images(urls, tmp_path / "cache", SETTINGS)
    before = len(server.hits)
    assert fetch_images(urls, tmp_path / "cache", SETTINGS) == first
    assert len(server.hits) == before
    first[1].write_bytes(first[1].read_bytes()[:50])  # damaged on disk since
    again = fetch_images(urls, tmp_path / "cache", SETTINGS)
    assert server.hits[before:] == ["/good2.png"] and again[1].read_bytes() == png_bytes(seed=2)


def test_rows_never_get_another_rows_image(server, tmp_path):
    rows = [
        {"id": "K", "url": f"{server.url}/good1.png"},
        {"id": "K.1", "url": f"{server.url}/good2.png"},  # an id that K is a prefix of
        {"id": "K", "url": f"{server.url}/good3.png"},  # a duplicate id with another image
        {"id": "", "url": f"{server.url}/good2.png"},  # an empty id
        {"id": "", "url": f"{server.url}/good1.png"},
    ]
    csv_path = write_local_copy(rows, "url", "id", tmp_path / "out", SETTINGS)
    kept = list(csv.DictReader(csv_path.open()))
    seeds = {"good1": 1, "good2": 2, "good3": 3}
    for row in kept:
        expected = png_bytes(seed=seeds[row["url"].rsplit("/", 1)[1][:-4]])
        assert (tmp_path / "out" / row["local_image_path"]).read_bytes() == expected, row
    assert len(kept) == 5


def test_local_copy_writes_csv_and_failure_list(server, tmp_path):
    names = ["good1", "good2", "missing", "corrupt", "flaky"]
    rows = [{"product_code": n, "imageurl": f"{server.url}/{n}.png", "title": n.upper()} for n in names]
    rows.append({"product_code": "odd", "imageurl": "not a url\n", "title": "ODD"})
    csv_path = write_local_copy(rows, "imageurl", "product_code", tmp_path / "out", SETTINGS)
    kept = list(csv.DictReader(csv_path.open()))
    assert [r["product_code"] for r in kept] == ["good1", "good2", "flaky"]
    assert all((tmp_path / "out" / r["local_image_path"]).is_file() for r in kept)
    failed = list(csv.DictReader((tmp_path / "out" / "failed.csv").open()))
    assert {r["product_code"] for r in failed} == {"missing", "corrupt", "odd"}
    assert all(r["reason"] for r in failed)


def test_a_missing_column_is_one_error(tmp_path):
    from phi3v_recipe.errors import UserError

    with pytest.raises(UserError, match=r"no column 'imageurl'; its columns are \['code', 'url'\]"):
        write_local_copy([{"code": "a", "url": "http://x/y.png"}], "imageurl", "code", tmp_path / "out", SETTINGS)


def test_two_runs_into_one_folder_at_once_both_finish(server, tmp_path):
    rows = [{"id": str(i), "url": f"{server.url}/good{1 + i % 3}.png"} for i in range(12)]
    errors = []

    def run():
        try:
            write_local_copy(rows, "url", "id", tmp_path / "out", SETTINGS)
        except Exception as err:  # noqa: BLE001 - the test reports whatever went wrong
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    kept = list(csv.DictReader((tmp_path / "out" / "data.csv").open()))
    assert len(kept) == 12
    assert all(
        (tmp_path / "out" / r["local_image_path"]).read_bytes() == png_bytes(seed=1 + int(r["id"]) % 3) for r in kept
    )
    assert not list((tmp_path / "out").rglob("*.part"))


def test_cache_names_come_from_the_url():
    assert cache_key("http://a/b.png") != cache_key("http://a/b.png?v=2")
    assert len(cache_key("x")) == 32


def test_prepare_data_fetches_urls_and_skips_failures(server, tmp_path, tiny_dir):
    from transformers import AutoProcessor

    from phi3v_recipe.data import DataArguments, prepare_data

    rows = [
        {
            "product_code": code,
            "imageurl": f"{server.url}/{code}.png",
            "title": code,
            "category3_code": "BAGS",
            "full_price": "100.0",
        }
        for code in ("good1", "missing")
    ]
    path = tmp_path / "remote.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    args = DataArguments(
        dataset=str(path), image_url_column="imageurl", image_cache_dir=str(tmp_path / "c"), eval_fraction=0
    )
    data = prepare_data(args, AutoProcessor.from_pretrained(tiny_dir), max_length=4096)
    assert data.train["product_code"] == ["good1"]
    [(_, key, err)] = data.skipped
    assert key == "missing" and str(err) == "image download failed: HTTP 404"


def test_a_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from phi3v_recipe import files

    target = tmp_path / "a.png"
    files.write_atomically(target, b"old")
    real_write = Path.write_bytes

    def half_then_full_disk(self, data):
        real_write(self, data[:1])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_full_disk)
    with pytest.raises(OSError):
        files.write_atomically(target, b"new bytes")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
