"""A real HTTP server on 127.0.0.1 for the remote-shard tests, with a fault injector.

It serves the files of one directory. Faults, per file name: `once[name]` is a list used up one
request at a time, `always[name]` applies to every request:

  "500"      answer 500 Internal Server Error;
  "drop"     send the headers and half the body, then close the connection;
  "slow"     wait `slow_s` before answering (longer than the client's timeout);
  "corrupt"  send the right number of bytes with one of them changed;
  "404"      answer 404 Not Found.

`requests[name]` counts the GETs of each file, `sent[name]` the bytes of its complete answers.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path


class FaultServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, directory: Path, slow_s: float = 1.0):
        super().__init__(("127.0.0.1", 0), FaultHandler)
        self.directory = directory
        self.slow_s = slow_s
        self.once: dict[str, list[str]] = {}
        self.always: dict[str, str] = {}
        self.requests: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_fault(self, name: str) -> str:
        with self.lock:
            self.requests[name] += 1
            if self.once.get(name):
                return self.once[name].pop(0)
            return self.always.get(name, "")

    def shard_requests(self) -> int:
        return sum(n for name, n in self.requests.items() if name.endswith(".tar"))


class FaultHandler(http.server.BaseHTTPRequestHandler):
    server: FaultServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        name = self.path.split("?", 1)[0].lstrip("/")
        fault = self.server.next_fault(name)
        path = self.server.directory / name
        try:
            if fault == "500":
                return self.send_error(500)
            if fault == "404" or not path.is_file():
                return self.send_error(404)
            data = bytearray(path.read_bytes())
            if fault == "corrupt":
                data[len(data) // 2] ^= 0xFF
            if fault == "slow":
                time.sleep(self.server.slow_s)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if fault == "drop":
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(data)
            with self.server.lock:
                self.server.sent[name] += len(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): expected
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's name)
        pass


@contextlib.contextmanager
def serve(directory: Path, slow_s: float = 1.0) -> Iterator[FaultServer]:
    server = FaultServer(directory, slow_s)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
