"""Reading data files and writing results atomically (write to a temporary file or folder, then rename)."""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from zephyr.errors import UsageError

DATA_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would give (0644 under the usual umask); mkstemp gives 0600


@contextlib.contextmanager
def folder_lock(folder: str | Path, wait: bool = True):
    """Exclusive lock held on a folder itself: the OS releases it even on kill -9, and no lock file is left
    behind. With ``wait`` False, raises BlockingIOError at once if another process holds it."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        yield
    finally:
        os.close(handle)  # releases the lock


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(target: str | Path, keep_existing: bool = False):
    """Yield an empty staging directory beside ``target`` (on its filesystem, so the rename is atomic), renamed to
    ``target`` when the block succeeds and removed when it fails: ``target`` is either whole or absent.

    ``keep_existing``: a directory another process put at ``target`` meanwhile (the same conversion, by another
    rank) is kept and ours dropped, instead of an error.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        try:
            os.replace(staging, target)
        except OSError:
            if not (keep_existing and target.is_dir()):
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_json(path: str | Path) -> dict:
    """Read a JSON object, naming the file in the error if it is missing or corrupt."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise UsageError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: {not_utf8(err)}") from None
    except OSError as err:
        raise UsageError(f"{path}: cannot read ({err.strerror})") from None


def read_log_rows(path: str | Path) -> list[dict]:
    """Rows of an append-only JSON-lines log (train_log.jsonl); [] if there is none.

    A kill in the middle of an append leaves a last line cut short, without its newline: that line is dropped, as
    if the append had not begun. A broken line anywhere else is an error naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):  # the text does not end in a newline: an append that was cut short
                break
            raise UsageError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
    return rows


def not_utf8(err: UnicodeDecodeError) -> str:
    return f"not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})"


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a .jsonl, .json (array, or {"data": [...]}), .csv or .parquet file (text files in UTF-8)."""
    try:
        return _read_rows(Path(path))
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: {not_utf8(err)}") from None
    except csv.Error as err:
        raise UsageError(f"{path}: not valid CSV ({err})") from None
    except OSError as err:
        raise UsageError(f"{path}: cannot read ({err.strerror})") from None


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise UsageError(f"{path}: data file not found")
    suffix = path.suffix.lower()
    if suffix not in DATA_EXTENSIONS:
        raise UsageError(f"{path}: unsupported data file type {suffix!r} (use one of {', '.join(DATA_EXTENSIONS)})")
    if path.stat().st_size == 0:
        raise UsageError(f"{path}: data file is empty")
    if suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UsageError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise UsageError(f"{path}: line {number} is not a JSON object")
                rows.append(row)
    elif suffix == ".json":
        data = read_json(path)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise UsageError(f"{path}: expected a JSON array of objects")
        rows = data
    elif suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    else:
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises several types for corrupt files
            raise UsageError(f"{path}: cannot read parquet ({err})") from None
    if not rows:
        raise UsageError(f"{path}: data file has no rows")
    return rows


def is_missing(value) -> bool:
    """True for None, NaN and blank strings: the values a loader drops and counts."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, computed once per version of the file (its size and modification time) in a
    process."""
    path = Path(path).resolve()
    stat = path.stat()
    return _sha256(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:  # size and mtime: a changed file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
