"""A local HTTP server for image URLs that also misbehaves: 404s, 403s, stalls, slow, oversized and flaky
bodies, and redirects."""

from __future__ import annotations

import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


class ImageServer:
    """Serves `files` under /img/<name> and /list/<name> (with HEAD and byte ranges), and lists them at
    /list/; /missing is a 404, /forbidden a 403, /stall sends headers and then nothing, /hang never answers,
    /slow sends one byte a second, /big streams `big_bytes` bytes, /flaky/<name> fails with 503 while
    `flaky` is set, /redirect?to=URL answers 302 to URL, /loop redirects to itself, and /auth/<name> serves
    a file only with the Authorization header `auth`. Binds `host` (127.0.0.1 unless told) only, HTTPS with
    `tls`; `stop()` releases every stalled handler. `connections` counts the TCP connections accepted,
    `requests` the paths asked for, `headers` their headers."""

    def __init__(
        self,
        files: dict[str, bytes],
        big_bytes: int = 50 * 1024 * 1024,
        host: str = "127.0.0.1",
        tls: tuple[str, str] | None = None,
    ):
        self.files = files
        self.big_bytes = big_bytes
        self.big_sent = 0
        self.slow_sent = 0
        self.flaky = True
        self.auth: str | None = None
        self.requests: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.connections = 0
        self._release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def setup(self) -> None:
                server.connections += 1
                super().setup()

            def do_GET(self) -> None:
                server.requests.append(self.path)
                server.headers.append(dict(self.headers.items()))
                path = unquote(urlsplit(self.path).path)
                if path.startswith("/img/") and path[5:] in server.files:
                    self._send(server.files[path[5:]])
                elif path.startswith("/list/") and path[6:] in server.files:
                    self._send(server.files[path[6:]])
                elif path in ("/list", "/list/"):  # a folder listing, as fsspec's HTTP filesystem reads one
                    links = "".join(f'<a href="/list/{name}">{name}</a>\n' for name in sorted(server.files))
                    self._send(f"<html><body>{links}</body></html>".encode(), "text/html")
                elif path.startswith("/auth/") and path[6:] in server.files:
                    if server.auth is not None and self.headers.get("Authorization") == server.auth:
                        self._send(server.files[path[6:]])
                    else:
                        self.send_error(401, "who are you")
                elif path.startswith("/flaky/") and not server.flaky and path[7:] in server.files:
                    self._send(server.files[path[7:]])
                elif path.startswith("/flaky/"):
                    self.send_error(503, "try again later")
                elif path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(urlsplit(self.path).query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path == "/loop":
                    self.send_response(302)
                    self.send_header("Location", "/loop")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path == "/forbidden":
                    self.send_error(403, "not for you")
                elif path == "/stall":
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self.wfile.flush()
                    server._release.wait(60)
                elif path == "/hang":
                    server._release.wait(60)
                elif path == "/slow":
                    self._trickle()
                elif path == "/big":
                    self._stream_big()
                else:
                    self.send_error(404, "no such image")

            def do_HEAD(self) -> None:
                path = unquote(urlsplit(self.path).path)
                name = path[5:] if path.startswith("/img/") else path[6:] if path.startswith("/list/") else ""
                if name in server.files:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(server.files[name])))
                    self.send_header("Accept-Ranges", "bytes")
                    self.end_headers()
                else:
                    self.send_error(404, "no such file")

            def _send(self, data: bytes, kind: str = "application/octet-stream") -> None:
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes="):  # random access, as Parquet readers use it
                    first, _, last = ranged[6:].partition("-")
                    start, stop = int(first or 0), min(int(last) + 1 if last else len(data), len(data))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
                    data = data[start:stop]
                else:
                    self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _trickle(self) -> None:
                """One byte a second: every single read returns in time, the whole never does."""
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                try:
                    while not server._release.is_set():
                        self.wfile.write(b"\xff")
                        self.wfile.flush()
                        server.slow_sent += 1
                        server._release.wait(1.0)  # the server's pace, not a test waiting
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up, as it should

            def _stream_big(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(server.big_bytes))
                self.end_headers()
                chunk = b"\xff" * 65536
                try:
                    while server.big_sent < server.big_bytes and not server._release.is_set():
                        self.wfile.write(chunk)
                        server.big_sent += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading, as it should

        self._httpd = ThreadingHTTPServer((host, 0), Handler)
        self._httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:  # (certificate file, key file): serve HTTPS
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self._httpd.server_address[0]}:{self.port}"

    def start(self) -> ImageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        time.sleep(0.05)
