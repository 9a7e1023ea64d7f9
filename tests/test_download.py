import csv
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from phi3v_recipe.download import FetchSettings, fetch_images, write_local_copy

from .test_processor import photo


def png_bytes(width=40, height=30, seed=0):
    buffer = io.BytesIO()
    photo(width, height, seed=seed).save(buffer, format="PNG")
    return buffer.getvalue()


class Server:
    """A real HTTP server on 127.0.0.1 serving good images, 404s, slow answers, corrupt bytes and a huge file."""

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
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits.append(self.path)
                if self.path == "/slow.png":
                    time.sleep(1.5)
                if self.path == "/flaky.png" and server.flaky_left > 0:
                    server.flaky_left -= 1
                    self.send_error(503)
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

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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


SETTINGS = FetchSettings(workers=4, timeout=0.5, retries=2, backoff=0.05, max_bytes=200_000)


def rows_for(server):
    names = ["good1", "good2", "missing", "slow", "corrupt", "huge", "flaky", "ftp"]
    rows = [{"product_code": name, "imageurl": f"{server.url}/{name}.png"} for name in names]
    rows[-1]["imageurl"] = "ftp://example.com/x.png"
    return rows


def test_fetch_keeps_good_rows_and_counts_the_rest(server, tmp_path):
    paths, failures = fetch_images(rows_for(server), "imageurl", "product_code", tmp_path / "cache", SETTINGS)

    assert sorted(paths) == ["flaky", "good1", "good2"]  # flaky: a 503, then success on retry
    assert paths["good1"].read_bytes() == png_bytes(seed=1)
    assert failures["missing"] == "HTTP 404"
    assert failures["slow"].startswith("network error after 3 tries")
    assert failures["corrupt"].startswith("not a readable image")
    assert "200000-byte limit" in failures["huge"]
    assert failures["ftp"].startswith("not an http(s) URL")
    assert server.hits.count("/missing.png") == 1  # a 4xx is not retried
    assert server.hits.count("/slow.png") == 3  # timeouts are retried (retries=2)
    assert not list((tmp_path / "cache").glob("*.part"))


def test_second_run_fetches_nothing(server, tmp_path):
    rows = [r for r in rows_for(server) if r["product_code"].startswith("good")]
    fetch_images(rows, "imageurl", "product_code", tmp_path / "cache", SETTINGS)
    before = len(server.hits)
    paths, failures = fetch_images(rows, "imageurl", "product_code", tmp_path / "cache", SETTINGS)
    assert len(server.hits) == before
    assert sorted(paths) == ["good1", "good2"] and not failures


def test_interrupted_run_resumes(server, tmp_path):
    cache = tmp_path / "cache"
    rows = [r for r in rows_for(server) if r["product_code"].startswith("good")]
    rows.append({"product_code": "good3", "imageurl": f"{server.url}/good3.png"})
    fetch_images(rows[:1], "imageurl", "product_code", cache, SETTINGS)  # the run that was cut short
    (cache / "good2.png.part").write_bytes(b"half a file")  # killed while writing good2
    server.hits.clear()

    paths, failures = fetch_images(rows, "imageurl", "product_code", cache, SETTINGS)

    assert sorted(server.hits) == ["/good2.png", "/good3.png"]
    assert sorted(paths) == ["good1", "good2", "good3"] and not failures
    assert paths["good2"].read_bytes() == png_bytes(seed=2)


def test_local_copy_writes_csv_and_failure_list(server, tmp_path):
    rows = [{**r, "title": r["product_code"].upper()} for r in rows_for(server)]
    csv_path = write_local_copy(rows, "imageurl", "product_code", tmp_path / "out", SETTINGS)
    kept = list(csv.DictReader(csv_path.open()))
    assert [r["product_code"] for r in kept] == ["good1", "good2", "flaky"]
    assert all((tmp_path / "out" / r["local_image_path"]).is_file() for r in kept)
    failed = list(csv.DictReader((tmp_path / "out" / "failed.csv").open()))
    assert {r["product_code"] for r in failed} == {"missing", "slow", "corrupt", "huge", "ftp"}
    assert all(r["reason"] for r in failed)


def test_prepare_data_fetches_urls_and_skips_failures(server, tmp_path, tiny_dir):
    from transformers import AutoProcessor

    from phi3v_recipe.data import DataArguments, prepare_data

    rows = [
        {
            "product_code": "good1",
            "imageurl": f"{server.url}/good1.png",
            "title": "A",
            "category3_code": "BAGS",
            "full_price": "100.0",
        },
        {
            "product_code": "missing",
            "imageurl": f"{server.url}/missing.png",
            "title": "B",
            "category3_code": "BAGS",
            "full_price": "200.0",
        },
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
