"""A static HTTP server of one directory on loopback, answering Range requests (aiohttp's), as a
separate process: `python tests/file_server.py DIR PORT`. Tests use it as a gallery and model host."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
from aiohttp import web


class FileServer:
    """The server process, stopped by its own PID."""

    def __init__(self, directory: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, __file__, str(directory), str(port)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("the file server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


if __name__ == "__main__":
    app = web.Application()
    app.router.add_static("/", sys.argv[1])
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None)
