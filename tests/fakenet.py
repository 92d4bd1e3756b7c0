"""Stand-ins for the internet on 127.0.0.1, for the download path: a server that sends files,
one that accepts connections and never answers (a hung network), a port nobody listens on."""

import contextlib
import gzip
import hashlib
import http.server
import io
import socket
import tarfile
import threading
from pathlib import Path


@contextlib.contextmanager
def serve(files: dict):
    """{name: bytes} over HTTP; yields the base URL (ending in /)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def silent():
    """A listening socket that never accepts or answers: connecting works (the kernel's
    backlog), then every read waits. Yields its URL."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield f"http://127.0.0.1:{s.getsockname()[1]}/"
    finally:
        s.close()


def refused() -> str:
    """The URL of a port nobody listens on: connection refused at once."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def tar_gz(folder: Path) -> bytes:
    """`folder` as a .tar.gz holding it by its name (as cifar-10-python.tar.gz holds
    cifar-10-batches-py/)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return buffer.getvalue()


def gz(path: Path) -> bytes:
    return gzip.compress(Path(path).read_bytes(), mtime=0)
