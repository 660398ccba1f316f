"""The shard downloader against a local HTTP server (127.0.0.1 only; no test touches the network)."""

import http.server
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanogpt_core.download import DownloadError, download_file, download_shards, train_tokenizer_on_shards, verify_parquet

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])


def write_shard(path, n_docs=200, seed=0):
    texts = [f"document {seed}-{i}: the quick brown fox jumps over the lazy dog {i * 7919 % 1000}." for i in range(n_docs)]
    pq.write_table(pa.table({"text": texts}), path, row_group_size=50)
    return texts


class Server:
    """Serves ``files`` (name -> bytes) with Range support; ``cut_next`` cuts the next reply after N bytes."""

    def __init__(self, files):
        self.files, self.cut_next, self.requests = files, None, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                outer.requests.append((name, self.headers.get("Range")))
                if name not in outer.files:
                    self.send_error(404)
                    return
                data, start = outer.files[name], 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.removeprefix("bytes=").rstrip("-"))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if outer.cut_next is not None:  # an interrupted transfer: send part, then drop the connection
                    body, outer.cut_next = body[: outer.cut_next], None
                    self.close_connection = True
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    files = {}
    for i in range(3):
        write_shard(tmp_path / f"src{i}.parquet", seed=i)
        files[f"shard_{i:05d}.parquet"] = (tmp_path / f"src{i}.parquet").read_bytes()
    srv = Server(files)
    yield srv
    srv.close()


def test_downloads_verified_shards(server, tmp_path):
    out = tmp_path / "out"
    paths = download_shards(3, out, base_url=server.url, progress=False)
    assert [p.name for p in paths] == [f"shard_{i:05d}.parquet" for i in range(3)]
    for p in paths:
        assert p.read_bytes() == server.files[p.name]
        assert verify_parquet(p) == 200
    assert not list(out.glob("*.partial"))
    n = len(server.requests)
    download_shards(3, out, base_url=server.url, progress=False)  # already there: nothing fetched
    assert len(server.requests) == n


def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    name = "shard_00001.parquet"
    server.cut_next = 1000
    dest = download_file(f"{server.url}/{name}", tmp_path / name, backoff=0.01, progress=False)
    assert dest.read_bytes() == server.files[name]
    assert server.requests[0] == (name, None)
    assert server.requests[1] == (name, "bytes=1000-")  # only the missing part was asked for


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    name = "shard_00002.parquet"
    (tmp_path / (name + ".partial")).write_bytes(server.files[name][:777])
    download_file(f"{server.url}/{name}", tmp_path / name, progress=False)
    assert (tmp_path / name).read_bytes() == server.files[name]
    assert server.requests == [(name, "bytes=777-")]


def test_corrupt_file_is_rejected_and_deleted(server, tmp_path):
    name = "shard_00000.parquet"
    server.files[name] = b"<html>not a parquet file</html>" * 10
    with pytest.raises(DownloadError, match="damaged and was deleted.*not a readable parquet"):
        download_file(f"{server.url}/{name}", tmp_path / name, progress=False)
    assert not (tmp_path / name).exists() and not (tmp_path / (name + ".partial")).exists()


def test_parquet_without_text_column_is_rejected(tmp_path):
    pq.write_table(pa.table({"content": ["a", "b"]}), tmp_path / "x.parquet")
    with pytest.raises(DownloadError, match="no `text` column"):
        verify_parquet(tmp_path / "x.parquet")


def test_missing_shard_and_bad_arguments_are_clear(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{server.url}/shard_00099.parquet", tmp_path / "x.parquet", progress=False)
    with pytest.raises(ValueError, match="need 2"):
        download_shards(1, tmp_path, base_url=server.url)


def test_unreachable_server_fails_after_retries(tmp_path):
    with pytest.raises(DownloadError, match="after 2 attempts"):
        download_file("http://127.0.0.1:9/shard_00000.parquet", tmp_path / "x.parquet", retries=1, backoff=0.01,
                      timeout=2, progress=False)


def test_tokenizer_trains_on_local_shards_within_a_char_budget(tmp_path):
    for i in range(3):
        write_shard(tmp_path / f"shard_{i:05d}.parquet", seed=i)
    enc = train_tokenizer_on_shards(tmp_path, vocab_size=300, max_chars=5_000)
    assert enc.n_vocab == 300
    text = "the quick brown fox"
    assert enc.decode(enc.encode_ordinary(text)) == text
    assert len(enc.encode_ordinary(text)) < len(text.encode())  # merges learned


def test_cli_tokenizer_writes_a_loadable_file(tmp_path):
    from nanogpt_core.__main__ import main
    from nanogpt_core.tokenizer import load_tokenizer

    for i in range(2):
        write_shard(tmp_path / f"shard_{i:05d}.parquet", seed=i)
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "--dir", str(tmp_path), "--vocab", "280", "--max-chars", "3000", "--out", str(out)]) == 0
    assert load_tokenizer(out).n_vocab == 280
