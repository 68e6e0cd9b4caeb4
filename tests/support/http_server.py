"""A local HTTP server for image URLs that also misbehaves: 404s, stalls, oversized and flaky bodies."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ImageServer:
    """Serves `files` under /img/<name>; /missing is a 404, /stall sends headers and then nothing,
    /hang never answers, /big streams `big_bytes` bytes, /flaky/<name> fails with 503 while `flaky` is set.
    Binds 127.0.0.1 only; `stop()` releases every stalled handler."""

    def __init__(self, files: dict[str, bytes], big_bytes: int = 50 * 1024 * 1024):
        self.files = files
        self.big_bytes = big_bytes
        self.big_sent = 0
        self.flaky = True
        self.requests: list[str] = []
        self._release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                server.requests.append(self.path)
                if self.path.startswith("/img/") and self.path[5:] in server.files:
                    self._send(server.files[self.path[5:]])
                elif self.path.startswith("/flaky/") and not server.flaky and self.path[7:] in server.files:
                    self._send(server.files[self.path[7:]])
                elif self.path.startswith("/flaky/"):
                    self.send_error(503, "try again later")
                elif self.path == "/stall":
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self.wfile.flush()
                    server._release.wait(60)
                elif self.path == "/hang":
                    server._release.wait(60)
                elif self.path == "/big":
                    self._stream_big()
                else:
                    self.send_error(404, "no such image")

            def _send(self, data: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

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

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> ImageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        time.sleep(0.05)
