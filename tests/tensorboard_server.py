"""A real `tensorboard` process on 127.0.0.1 for the dashboard's tests and benchmark.

With `ACTWATCH_BLOCK_TENSORFLOW=1` (the JAX and PyTorch test runs) TensorFlow is blocked in the
server process too (`sys.modules["tensorflow"] = None` before TensorBoard starts), so the tests
prove that the plugin works in a TensorBoard without TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Server", "tensorboard_server"]

_START = (
    "import sys\n"
    "if {block}:\n"
    "    sys.modules['tensorflow'] = None\n"
    "if not {plugins}:  # TensorBoard without the plugins installed packages add\n"
    "    from tensorboard import default\n"
    "    default.get_dynamic_plugins = lambda: []\n"
    "from tensorboard.main import run_main\n"
    "sys.argv[0] = 'tensorboard'\n"
    "run_main()\n"
)


@dataclass
class Server:
    """A running server: its base URL, process and log file."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **query: Any) -> tuple[int, dict[str, str], bytes]:
        """`(status, headers, body)` of GET `path` with `query` (no exception on 4xx)."""
        url = f"{self.url}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=60) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def json(self, path: str, **query: Any) -> Any:
        status, _, body = self.get(path, **query)
        assert status == 200, (path, query, status, body[:300])
        return json.loads(body)


@contextlib.contextmanager
def tensorboard_server(
    logdir: Path,
    log: Path,
    *,
    load_fast: str,
    extra: tuple[str, ...] = (),
    dynamic_plugins: bool = True,
) -> Iterator[Server]:
    """`tensorboard --logdir logdir` on a free port of 127.0.0.1 with default flags but
    `--load_fast`; stopped on exit. Its stderr goes to `log`. `dynamic_plugins=False` leaves
    out the plugins of installed packages (the actwatch tab), for a baseline."""
    block = os.environ.get("ACTWATCH_BLOCK_TENSORFLOW") == "1"
    command = [
        sys.executable, "-c", _START.format(block=block, plugins=dynamic_plugins),
        "--logdir", str(logdir), "--host", "127.0.0.1", "--port", "0",
        f"--load_fast={load_fast}", *extra,
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None:
            text = log.read_text(errors="replace")
            for line in text.splitlines():
                if " at http://127.0.0.1:" in line:
                    url = line.split(" at ", 1)[1].split()[0].rstrip("/")
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tensorboard did not start:\n{text[-3000:]}")
            time.sleep(0.1)
        yield Server(url, process, log)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
