"""Log directories on object storage (any fsspec URL): checked, written through a spool, mirrored.

Object stores cannot append (gcsfs turns an append into an overwrite; TensorBoard's own S3
writer uploads the whole file again each time, tensorboard#5655). So a run whose `log_dir` is
a URL writes its events file into a local spool directory, and `Uploader` uploads what was
written since the last upload as a whole NEW object, never rewriting one: at the first
write, then every `interval` seconds, and when the run ends. The objects of one spool file
are named `<spool name without .actwatch>.<chunk, 6 digits>.actwatch`, so a listing sorted by
name (as TensorBoard and actwatch read a run's files) reads them in write order; each object
holds whole records. A kill loses at most what was written since the last upload. A failed
upload is logged and retried with back-off on the uploader's own thread; training goes on.

Reading: `mirror` copies a remote log directory's events files into a local cache (only the
objects that are new or whose size or ETag changed), so the one reader (`reader`) reads it
as a local folder. `file://` URLs are local paths. No TensorFlow and no Keras import; fsspec
and the protocol's package are imported only for a URL (extras `actwatch[s3]`, ...).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from actwatch._logging import WarnOnce, logger

__all__ = [
    "DEFAULT_UPLOAD_INTERVAL",
    "EXTRAS",
    "Uploader",
    "filesystem",
    "is_url",
    "local_path",
    "mirror",
]

#: Seconds between two uploads of a run on object storage (and the longest a kill can lose).
DEFAULT_UPLOAD_INTERVAL = 30.0
#: The actwatch extra that installs each protocol's fsspec package.
EXTRAS = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "adl": "azure",
}
_PREFIX = "events.out.tfevents."
_SUFFIX = ".actwatch"


def is_url(path: Any) -> bool:
    """True for a `protocol://...` string other than `file://` (a local path)."""
    if not isinstance(path, str) or "://" not in path:
        return False
    return path.split("://", 1)[0].lower() not in ("file", "local")


def local_path(path: str) -> str:
    """`path` with a `file://` or `local://` scheme removed (the local path it names)."""
    for scheme in ("file://", "local://"):
        if path.lower().startswith(scheme):
            return path[len(scheme) :] or "/"
    return path


def _extra(protocol: str) -> str:
    return f"pip install 'actwatch[{EXTRAS.get(protocol, 'storage')}]'"


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """`(fsspec filesystem, path in it)` of `url`; a ValueError naming the extra to install
    when fsspec or the protocol's package is missing, or the protocol is unknown. Nothing is
    sent over the network."""
    protocol = url.split("://", 1)[0].lower()
    try:
        import fsspec
    except ImportError:
        raise ValueError(
            f"Invalid value for argument `log_dir`: {url!r} is on object storage, which needs "
            f"fsspec and the protocol's package. Install them with {_extra(protocol)}."
        ) from None
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise ValueError(
            f"Invalid value for argument `log_dir`: {url!r} has the protocol {protocol!r}, "
            "which fsspec does not know. Pass a local directory or a URL such as "
            "'s3://bucket/run1' (pip install 'actwatch[s3]'), 'gs://...' (actwatch[gcs]), "
            "'az://...' (actwatch[azure]) or 'memory://...'."
        ) from None
    except ImportError as exc:
        raise ValueError(
            f"Invalid value for argument `log_dir`: {url!r} needs a package that is not "
            f"installed ({exc}). Install it with {_extra(protocol)}."
        ) from None
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return fs, path.rstrip("/")


def join(url: str, *names: str) -> str:
    return "/".join([url.rstrip("/"), *names])


def unreachable(url: str, exc: BaseException) -> ValueError:
    """The error for a log_dir on object storage that cannot be written before training."""
    protocol = url.split("://", 1)[0].lower()
    return ValueError(
        f"Invalid value for argument `log_dir`: {url!r} cannot be written ({type(exc).__name__}: "
        f"{exc}). Check that the bucket exists, the endpoint is reachable and the credentials "
        f"are set: through `storage_options` (passed to fsspec) or fsspec's own configuration "
        f"(e.g. FSSPEC_{protocol.upper()}_ENDPOINT_URL, ~/.config/fsspec/*.json)."
    )


# Writing ------------------------------------------------------------------------------------


class Uploader:
    """Uploads the records appended to local spool files as new objects under `url`.

    Call `written(path, size)` after each whole record written to the spool file `path`
    (its size then): the uploader thread uploads bytes `[uploaded, size)` as the next chunk,
    at once for a file's first chunk and then every `interval` seconds. A failed upload is
    logged (once at WARNING, then DEBUG) and tried again after 1, 2, 4, ... seconds (at most
    `interval`). `close` uploads the rest (trying for at most `timeout` seconds), then
    removes the spool directory when everything was uploaded, else says where it is.

    Attributes:
        uploads, bytes_uploaded, failures: counts; `seconds`: time spent uploading.
    """

    def __init__(
        self,
        url: str,
        spool: str,
        *,
        interval: float = DEFAULT_UPLOAD_INTERVAL,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.spool = spool
        self.interval = interval
        self.fs, self.path = filesystem(url, storage_options)
        self.uploads = self.bytes_uploaded = self.failures = 0
        self.seconds = 0.0
        self._sizes: dict[str, int] = {}  # spool file -> bytes of whole records written
        self._done: dict[str, tuple[int, int]] = {}  # spool file -> (bytes uploaded, chunks)
        self._retry: dict[str, int] = {}  # spool file -> end of its chunk that failed
        self._wake = threading.Condition()
        self._closing = False
        self._failed = WarnOnce("actwatch: another upload failed")
        self._thread = threading.Thread(target=self._loop, name="actwatch-upload", daemon=True)
        self._thread.start()

    def written(self, path: str, size: int) -> None:
        with self._wake:
            first = path not in self._sizes
            self._sizes[path] = size
            if first:
                self._wake.notify()  # a file's first records go up at once

    def pending(self) -> int:
        """Bytes written to the spool and not uploaded yet."""
        with self._wake:
            return sum(s - self._done.get(p, (0, 0))[0] for p, s in self._sizes.items())

    def upload(self) -> bool:
        """Upload every file's new records now; True when nothing is left to upload."""
        ok, short = self._round()
        if ok and short:  # a retried chunk kept its bytes: what came after goes up now
            ok, _ = self._round()
        return ok

    def _round(self) -> tuple[bool, bool]:
        """One chunk per file: its new records, or the chunk that failed, again. Returns
        (every upload succeeded, a retried chunk left newer records behind)."""
        with self._wake:
            sizes = dict(self._sizes)
        ok, short = True, False
        for path, size in sizes.items():
            done, chunks = self._done.get(path, (0, 0))
            # A chunk whose upload failed is retried with exactly its bytes under its name:
            # if the failed attempt landed after all, the retry writes the same object again.
            end = self._retry.get(path, size)
            if end <= done:
                continue
            try:
                with open(path, "rb") as file:
                    file.seek(done)
                    data = file.read(end - done)
            except OSError as exc:
                # The spool file is gone (a temp-folder cleaner): nothing of it can go up.
                logger.warning(
                    "actwatch: the spool file %s cannot be read (%s: %s); its events not yet "
                    "uploaded to %s are lost, the other files go on.",
                    path,
                    type(exc).__name__,
                    exc,
                    self.url,
                )
                with self._wake:
                    self._sizes.pop(path, None)
                continue
            name = os.path.basename(path).removesuffix(_SUFFIX)
            target = f"{self.path}/{name}.{chunks:06d}{_SUFFIX}"
            start = time.perf_counter()
            try:
                self.fs.pipe_file(target, data)
            except Exception as exc:
                self.failures += 1
                self._failed(
                    "actwatch: uploading %d bytes to %s failed (%s: %s); retried with "
                    "back-off, training goes on. Later failures are logged at DEBUG.",
                    len(data),
                    self.url,
                    type(exc).__name__,
                    exc,
                )
                self._retry[path] = end
                ok = False
                continue
            self.seconds += time.perf_counter() - start
            self.uploads += 1
            self.bytes_uploaded += len(data)
            self._done[path] = (end, chunks + 1)
            self._retry.pop(path, None)
            short = short or end < size
        return ok, short

    def close(self, timeout: float = 60.0) -> bool:
        """Upload the rest and stop; True when everything was uploaded (the spool is then
        removed)."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()
        deadline = time.monotonic() + timeout
        delay = 0.5
        while not self.upload() and time.monotonic() + delay < deadline:
            time.sleep(delay)
            delay = min(2 * delay, 8.0)
        if self.pending():
            logger.warning(
                "actwatch: %d bytes of events could not be uploaded to %s; they are kept in "
                "%s (copy them there by hand).",
                self.pending(),
                self.url,
                self.spool,
            )
            return False
        shutil.rmtree(self.spool, ignore_errors=True)
        return True

    def _loop(self) -> None:
        delay = 0.0
        while True:
            with self._wake:
                if not self._closing:
                    self._wake.wait(delay or self.interval)
                if self._closing:
                    return
            try:
                ok = self.upload()
            except Exception as exc:  # never let the thread die: close() uploads the rest
                logger.debug("actwatch: upload round failed (%s: %s)", type(exc).__name__, exc)
                ok = False
            delay = 0.0 if ok else min(max(1.0, 2 * delay), self.interval)


# Reading ------------------------------------------------------------------------------------

_mirror_lock = threading.Lock()


def mirror(url: str, storage_options: Mapping[str, Any] | None = None) -> Path:
    """A local copy of the events files under `url`, brought up to date: an object is
    downloaded when it is new or its size or ETag changed (objects actwatch uploads never
    change, so only new chunks are fetched); files gone from the store are removed. Each
    file is replaced whole (a new inode), so an index of the copy reads it again.

    The copy lives under `$ACTWATCH_CACHE` (default: `<temp dir>/actwatch-remote-<uid>`),
    in a folder named by the URL's hash, then its last part (the report names a single run
    by it).
    """
    fs, root = filesystem(url, storage_options)
    cache = os.environ.get("ACTWATCH_CACHE") or os.path.join(
        tempfile.gettempdir(), f"actwatch-remote-{os.getuid() if hasattr(os, 'getuid') else 0}"
    )
    digest = hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16]
    local = Path(cache, digest, root.rstrip("/").rsplit("/", 1)[-1] or "root")
    with _mirror_lock:
        fs.invalidate_cache()
        try:
            found = fs.find(root, detail=True)
        except FileNotFoundError:
            found = {}
        manifest_path = local.parent / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = {}
        wanted: dict[str, str] = {}
        for key, info in found.items():
            if info.get("type") == "directory":
                continue
            relative = key[len(root) :].lstrip("/")
            if not relative.rsplit("/", 1)[-1].startswith(_PREFIX) or ".." in relative:
                continue
            tag = f"{info.get('size')} {_etag(info)}"
            wanted[relative] = tag
            target = local / relative
            if manifest.get(relative) == tag and target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.part")
            temporary.write_bytes(fs.cat_file(key))
            os.replace(temporary, target)
            manifest[relative] = tag
        for relative in set(manifest) - set(wanted):
            with contextlib.suppress(OSError):
                (local / relative).unlink()
            del manifest[relative]
        local.mkdir(parents=True, exist_ok=True)
        manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    return local


def _etag(info: Mapping[str, Any]) -> str:
    for key in ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "updated"):
        if info.get(key):
            return str(info[key])
    return ""
