"""Real object-storage servers on 127.0.0.1 for the storage tests: moto's S3 server and the
GCS emulator (`gcp-storage-emulator`), each on a free port."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import fsspec

# gcsfs' experimental default asks a real GCS over gRPC for the bucket's type (a 60 s
# timeout against an emulator): the plain client.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

#: Fail fast when a server is down: one attempt, one second to connect.
FAST = {"config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1, "read_timeout": 5}}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class S3:
    """moto's S3 server on 127.0.0.1 with the bucket `bucket`; restartable on its port (the
    objects live in this process, so they outlast a restart)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.options = {"endpoint_url": self.endpoint, "key": "testing", "secret": "testing"}
        self._server_class = ThreadedMotoServer
        self.start()
        fsspec.filesystem("s3", **self.options).makedirs("bucket", exist_ok=True)

    def start(self) -> None:
        self.server = self._server_class(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


@contextlib.contextmanager
def s3_server() -> Iterator[S3]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = S3()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()


@contextlib.contextmanager
def gcs_server() -> Iterator[dict[str, Any]]:
    """The GCS emulator with the bucket `gbucket`; yields gcsfs' `storage_options`."""
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="gbucket")
    server.start()
    try:
        yield {"endpoint_url": f"http://127.0.0.1:{port}", "token": "anon", "project": "test"}
    finally:
        server.stop()
