"""Where a run's events go: `log_dir` checked before training, and claimed by one run only."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from tensorboard.compat.proto import event_pb2

from actwatch._logging import logger
from actwatch.events import storage, tags
from actwatch.events.records import EVENT_FILE_PREFIX, RecordError, read_record_at, record_offsets

__all__ = [
    "CLAIM_FILE",
    "CLAIM_STALE_SECONDS",
    "check_log_dir",
    "claim_log_dir",
    "last_step",
    "release_claim",
]


def check_log_dir(
    log_dir: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> str:
    """Create `log_dir` if needed and prove it is writable; raise ValueError otherwise.

    A URL (`s3://...`, any fsspec protocol but `file://`) is only checked here for a known
    protocol whose package is installed (a ValueError naming the extra otherwise): nothing
    is sent over the network before training, and no local folder is ever made of it.
    """
    if not isinstance(log_dir, (str, os.PathLike)):
        raise TypeError(
            "Invalid value for argument `log_dir`: expected a path (str or os.PathLike). "
            f"Received: log_dir={log_dir!r} of type {type(log_dir).__name__}."
        )
    path = os.fspath(log_dir)
    if storage.is_url(path):
        storage.filesystem(path, storage_options)
        return path.rstrip("/")
    path = storage.local_path(path)
    if not path:
        raise ValueError(
            "Invalid value for argument `log_dir`: received an empty path. Pass a directory, "
            "for example log_dir='logs/run1'."
        )
    try:
        os.makedirs(path, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".actwatch-write-test-", dir=path)
        try:
            os.write(handle, b"ok")
        finally:
            os.close(handle)
            os.remove(probe)
    except OSError as exc:
        raise ValueError(
            f"Invalid value for argument `log_dir`: {path!r} cannot be created or written "
            f"({exc.strerror or exc}). Pass a directory you can write to."
        ) from None
    return path


#: The file by which a process claims a log_dir for a monitor's run: "<host> <pid> <time>".
#: It is removed when the run's training ends; readers ignore it.
CLAIM_FILE = ".actwatch-claim"
#: A claim whose process cannot be asked (another host's, or on object storage) holds this
#: many seconds after it was made, then is stale: a run writes its first check long before.
CLAIM_STALE_SECONDS = 3600.0
_held: dict[str, str] = {}  # claims this process made and holds: path -> content


def last_step(directory: str | os.PathLike[str]) -> int | None:
    """The step of the last check in the actwatch events files of `directory` (None without
    one): in each file the last readable record of a check (a monitor writes its steps in
    order; the update ratios written on their own at the step after a check, and alerts
    written between checks, are passed over), found from the record headers, so a file of
    images is not read through."""
    steps = []
    for name in os.listdir(directory):
        if not (name.startswith(EVENT_FILE_PREFIX) and name.endswith(".actwatch")):
            continue
        step = _last_check_in(os.path.join(directory, name))
        if step is not None:
            steps.append(step)
    return max(steps, default=None)


def _last_check_in(path: str) -> int | None:
    """The step of the last readable record of a check in the events file `path`."""
    for offset in reversed(record_offsets(path)):
        try:
            event = event_pb2.Event.FromString(read_record_at(path, offset))
        except (RecordError, DecodeError):  # a damaged record: the one before it
            continue
        if _of_a_check(event):
            return int(event.step)
    return None


def _of_a_check(event: event_pb2.Event) -> bool:
    """Whether `event` is a check's record: summaries beyond update ratios and alerts."""
    values = event.summary.value if event.HasField("summary") else ()
    between = all(v.tag == tags.ALERTS or "update_ratio" in v.tag for v in values)
    return bool(values) and not between


def claim_log_dir(
    log_dir: str | os.PathLike[str],
    start_step: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """The directory a new monitor's run is written to: `log_dir`, or its first free sibling.

    Writing a second run into a directory mixes the two into one run (in the tab and the
    report, a later write of a step wins). So `log_dir` is refused when it holds actwatch
    events files (`events.out.tfevents.*.actwatch`) up to or past `start_step`, the first step
    the new run writes, or when a process still running (this one included) claimed it
    for another monitor that has not written yet; the run then goes to the first free
    `<log_dir>-2`, `<log_dir>-3`, ..., which is said at WARNING on the "actwatch" logger. A
    run that begins after the last step written there (training resumed from a checkpoint,
    `initial_epoch`) goes on in `log_dir`: its steps follow the earlier ones. The directory
    chosen is claimed with `CLAIM_FILE`, created atomically, so that runs starting at once get
    a directory each; `release_claim` removes it when the run's training ends. A claim whose
    process is gone is replaced; one whose process cannot be asked (made on another host)
    is stale `CLAIM_STALE_SECONDS` after it was made.

    On object storage (a URL) the same rules hold, with `<url>-2`, ... as siblings; the claim
    object is created with the store's exclusive create where fsspec has one (S3, GCS,
    memory), else written and read back (two runs starting within a second may then share a
    directory). A store that cannot be written (no bucket, no credentials, no endpoint)
    raises a ValueError saying so, before training.

    Call it once per monitor, before its first write: the same monitor's later `fit()` calls
    continue its steps in the directory it got. Raises what `check_log_dir` raises when a
    directory cannot be created or written.

    Example:

    ```python
    run_dir = claim_log_dir("logs/run1")  # "logs/run1", or "logs/run1-2" after a first run
    ```
    """
    path = check_log_dir(log_dir, storage_options)
    if storage.is_url(path):
        return _claim_url(path, start_step, storage_options)
    base = os.path.normpath(path)
    if os.path.basename(base) in (".", ".."):
        base = os.path.abspath(base)
    refused = None
    for n in itertools.count(1):
        candidate = path if n == 1 else f"{base}-{n}"
        if os.path.exists(candidate) and not os.path.isdir(candidate):
            continue  # a file of that name: not ours to replace
        why = _claim(check_log_dir(candidate), start_step)  # a resumed run: its own dir
        if why is None:
            if refused is not None:
                _moved(path, refused, candidate)
            return candidate
        refused = refused or why
    raise AssertionError("unreachable")  # pragma: no cover


def _moved(path: str, refused: str, candidate: str) -> None:
    logger.warning(
        "actwatch: log_dir %r %s; this run is written to %r instead, so that both runs are "
        "kept. Give each run its own log_dir to name it yourself.",
        path,
        refused,
        candidate,
    )


def _claim(directory: str, start_step: int | None) -> str | None:
    """Claim `directory` for a new run beginning at `start_step`: None when done, else why
    another run holds it."""
    events = sorted(
        name
        for name in os.listdir(directory)
        if name.startswith(EVENT_FILE_PREFIX) and name.endswith(".actwatch")
    )
    if events:
        last = last_step(directory)
        if start_step is not None and last is not None and start_step > last:
            return None  # a resumed run: its steps follow the earlier ones
        upto = "" if last is None else f" up to step {last}"
        return f"already holds the events of an earlier run{upto} ({events[-1]})"
    claim = os.path.join(directory, CLAIM_FILE)
    for _ in range(2):
        try:
            handle = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = _claim_owner(claim)
            if owner is not None:
                return (
                    f"is claimed by {owner}, whose run has not written yet (delete {claim!r} "
                    "if that process is gone)"
                )
            if not _remove_stale(claim):  # another process is taking it over
                break
            continue
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(_held.setdefault(claim, _claim_text()))
        return None
    return f"is being claimed by another process ({claim!r})"


#: A takeover lock older than this many seconds was left by a process that died taking over.
TAKEOVER_STALE_SECONDS = 30.0


def _remove_stale(claim: str) -> bool:
    """Remove the stale claim `claim`, holding `<claim>.takeover` (made with O_EXCL) while
    it looks again: several processes can read one stale claim at once, and one removing
    it after another had already claimed would remove that new claim. False when another
    process holds the takeover (the caller refuses the directory, as for a claim)."""
    lock = f"{claim}.takeover"
    try:
        handle = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        with contextlib.suppress(OSError):  # left by a process that died taking over
            if time.time() - os.path.getmtime(lock) > TAKEOVER_STALE_SECONDS:
                os.remove(lock)
        return False
    try:
        if _claim_owner(claim) is None:  # still the stale one: nobody can claim past it
            with contextlib.suppress(FileNotFoundError):
                os.remove(claim)
        return True
    finally:
        os.close(handle)
        os.remove(lock)


def _claim_text() -> str:
    return f"{socket.gethostname()} {os.getpid()} {time.time():.0f}\n"


def release_claim(run_dir: str | None, storage_options: Mapping[str, Any] | None = None) -> None:
    """Remove the claim this process made on `run_dir` (at the end of training): no
    `CLAIM_FILE` is left behind. Another process's claim is left; errors are ignored."""
    if run_dir is None:
        return
    url = storage.is_url(run_dir)
    claim = storage.join(run_dir, CLAIM_FILE) if url else os.path.join(run_dir, CLAIM_FILE)
    text = _held.pop(claim, None)
    if text is None:
        return
    with contextlib.suppress(Exception):
        if url:
            fs, path = storage.filesystem(claim, storage_options)
            if fs.cat_file(path).decode() == text:
                fs.rm_file(path)
        else:
            with open(claim, encoding="utf-8") as file:
                if file.read() == text:
                    os.remove(claim)


def _stale(made: float) -> bool:
    return time.time() - made > CLAIM_STALE_SECONDS


def _claim_owner(claim: str) -> str | None:
    """Who holds the claim `claim` while it holds; None once its process is gone."""
    try:
        with open(claim, encoding="utf-8") as file:
            host, pid_text, *rest = file.read().split()
        pid = int(pid_text)
        made = float(rest[0]) if rest else os.path.getmtime(claim)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # being written this instant, or not ours: leave it
        return "a process that did not say which"
    if host != socket.gethostname():  # whether it runs cannot be told from here: its age
        return None if _stale(made) else f"process {pid} on host {host!r}"
    if pid == os.getpid():
        return "another monitor of this process"
    if sys.platform == "win32":  # os.kill(pid, 0) would signal it there, not test it
        return f"process {pid}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:  # it exists but belongs to another user
        pass
    return f"process {pid}"


# Object storage ------------------------------------------------------------------------------


def _claim_url(url: str, start_step: int | None, options: Mapping[str, Any] | None) -> str:
    """`claim_log_dir` for a URL: `url`, or its first free sibling `<url>-2`, ..."""
    fs, root = storage.filesystem(url, options)
    refused = None
    for n in itertools.count(1):
        candidate = url if n == 1 else f"{url}-{n}"
        try:
            why = _claim_remote(fs, root if n == 1 else f"{root}-{n}", start_step, candidate)
        except Exception as exc:  # no bucket, credentials or endpoint
            raise storage.unreachable(candidate, exc) from None
        if why is None:
            if refused is not None:
                _moved(url, refused, candidate)
            return candidate
        refused = refused or why
    raise AssertionError("unreachable")  # pragma: no cover


def _claim_remote(fs: Any, directory: str, start_step: int | None, url: str) -> str | None:
    """`_claim` on object storage: `directory` in `fs` is the URL `url`."""
    fs.invalidate_cache(directory)
    try:
        names = sorted(fs.ls(directory, detail=False, refresh=True))
    except FileNotFoundError:
        names = []
    events = [
        n
        for n in names
        if n.rsplit("/", 1)[-1].startswith(EVENT_FILE_PREFIX) and n.endswith(".actwatch")
    ]
    if events:
        last = _remote_last_step(fs, events)
        if start_step is not None and last is not None and start_step > last:
            return None
        upto = "" if last is None else f" up to step {last}"
        return f"already holds the events of an earlier run{upto} ({events[-1]})"
    claim = f"{directory}/{CLAIM_FILE}"
    text = _claim_text()
    for _ in range(2):
        try:
            if fs.exists(claim):  # a store that ignores exclusive create (GCS emulators)
                raise FileExistsError(claim)
            fs.pipe_file(claim, text.encode(), mode="create")
        except FileExistsError:
            try:
                host, pid, made = fs.cat_file(claim).decode().split()
                if not _stale(float(made)):
                    return (
                        f"is claimed by process {pid} on host {host!r}, whose run has not "
                        f"written yet (delete {claim!r} if that process is gone)"
                    )
            except (FileNotFoundError, ValueError):
                pass
            fs.rm_file(claim)  # stale, or not a claim
            continue
        except (TypeError, NotImplementedError):  # no exclusive create: write and read back
            fs.pipe_file(claim, text.encode())
        if fs.cat_file(claim).decode() != text:
            return f"is being claimed by another process ({claim!r})"
        _held[storage.join(url, CLAIM_FILE)] = text
        return None
    return f"is being claimed by another process ({claim!r})"


def _remote_last_step(fs: Any, events: list[str]) -> int | None:
    """The last check's step in the remote events objects `events` (sorted by name)."""
    for name in reversed(events):
        with tempfile.TemporaryDirectory() as scratch:
            local = os.path.join(scratch, "events")
            with open(local, "wb") as file:
                file.write(fs.cat_file(name))
            step = _last_check_in(local)
        if step is not None:
            return step
    return None
