"""Atomic output writing and run provenance.

Every file memgeo writes goes to a temporary sibling first and is moved into place with
:func:`os.replace`, so an interrupted run never leaves a half-written file behind: each output is
either complete or absent.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from memgeo.errors import MemgeoError, OutputWriteError


_UMASK = os.umask(0)
os.umask(_UMASK)


def write_failure(path: str | os.PathLike[str], exc: OSError) -> OutputWriteError:
    """The one-line :class:`MemgeoError` for an ``OSError`` raised while creating or writing ``path``.

    Disk full / quota, read-only or forbidden folders and a file where a folder should be each get
    their own fix; anything else names the OS message.
    """
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space (the previous outputs there are intact) or choose another --out"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose a writable --out folder"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        fix = "a file stands where a folder is needed: choose another --out"
    else:
        fix = "check the output folder and choose another --out if needed"
    return OutputWriteError(f"cannot write {path} ({reason})", fix, code)


def make_folder(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p path``, with a one-line :class:`MemgeoError` (:func:`write_failure`) when it cannot be made."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MemgeoError(f"{path} exists and is not a folder", "choose a folder path for --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_failure(path, exc) from exc
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, then rename).

    Raises
    ------
    MemgeoError
        When the folder cannot be created or the file cannot be written (disk full, read-only,
        permission): the previous content of ``path``, if any, is left intact.
    """
    path = Path(path)
    make_folder(path.parent)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give outputs the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise write_failure(path, exc) from exc
    except BaseException:
        _discard(tmp)
        raise
    return path


def _discard(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        try:
            os.unlink(tmp)
        except OSError:
            pass


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (text that is not valid Unicode is a :class:`MemgeoError`)."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MemgeoError(f"text for {path} holds bytes that are not UTF-8 ({exc.reason} at position {exc.start})",
                          "pass options and files as UTF-8 text") from exc
    return atomic_write_bytes(path, data)


def read_json_file(path: str | os.PathLike[str], what: str, *, kind: type = dict) -> Any:
    """Read a UTF-8 JSON file that must hold a ``kind`` (default a JSON object), as one-line errors.

    Parameters
    ----------
    path : path-like
    what : str
        How to name the file in messages, e.g. ``"config file"``.
    kind : type, default dict
        The type the top-level value must have (``dict`` for an object, ``list`` for an array).

    Raises
    ------
    MemgeoError
        Missing or unreadable file, bytes that are not UTF-8, invalid JSON, NaN/Infinity literals,
        or a top-level value of another type.
    """
    path = Path(path)
    if not path.is_file():
        raise MemgeoError(f"{what} {path} does not exist", "check the path")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise MemgeoError(f"cannot read {what} {path} ({exc.strerror or exc})", "check the path") from exc
    except UnicodeDecodeError as exc:
        raise MemgeoError(f"{what} {path} is not UTF-8 text (byte {exc.start})", "save it as UTF-8 JSON") from exc
    return parse_json_text(text, f"{what} {path}", kind=kind)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json_text(text: str, what: str, *, kind: type = dict, example: str | None = None) -> Any:
    """Parse JSON ``text`` that must hold a ``kind``; ``what`` names it in messages (e.g. ``"--params"``)."""
    fix = f"pass e.g. {example}" if example else "fix the JSON"
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise MemgeoError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", fix) from exc
    except ValueError as exc:
        raise MemgeoError(f"{what} is not valid JSON ({exc})", fix) from exc
    if not isinstance(value, kind):
        want = {dict: "an object {...}", list: "an array [...]"}.get(kind, kind.__name__)
        raise MemgeoError(f"{what} holds a JSON {type(value).__name__}, not {want}", fix)
    return value


def native_order(arr: np.ndarray) -> np.ndarray:
    """``arr`` in the machine's byte order (torch refuses big-endian arrays); a no-op when it already is."""
    if arr.dtype.byteorder not in ("=", "|") and arr.dtype.byteorder != np.dtype(arr.dtype.type).byteorder:
        return arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _to_jsonable(obj: Any, finite: bool = True) -> Any:
    """``obj`` with numpy / torch values, paths and pydantic models turned into JSON types.

    ``finite=True`` (output files): NaN and +-inf become ``None`` (JSON null). ``finite=False`` keeps
    them as floats, which ``json.dumps`` writes as ``NaN`` / ``Infinity`` and ``json.loads`` reads back
    (an internal round trip, e.g. work-item rows, must not turn an infinite value into a null).
    """
    if isinstance(obj, Mapping):
        return {str(k): _to_jsonable(v, finite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v, finite) for v in obj]
    if isinstance(obj, np.ndarray):
        return _to_jsonable(obj.tolist(), finite)
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch.Tensor without importing torch
        return _to_jsonable(obj.detach().cpu().tolist(), finite)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if np.isfinite(f) or not finite else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "model_dump"):  # pydantic models
        return _to_jsonable(obj.model_dump(mode="json"), finite)
    return obj


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically; numpy/torch values and pydantic models are converted."""
    return atomic_write_text(path, json.dumps(_to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def write_csv(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write a list of flat dict rows as CSV atomically; columns are the union of keys, in first-seen order."""
    rows = [dict(r) for r in rows]
    fields: list[str] = []
    for r in rows:
        fields.extend(k for k in r if k not in fields)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _to_jsonable(v) for k, v in r.items()})
    return atomic_write_text(path, buf.getvalue())


def write_npy(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Save a numpy array in ``.npy`` format atomically."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def hash_file(path: str | os.PathLike[str], h: Any | None = None) -> Any:
    """Feed the bytes of the file ``path`` to the hash ``h`` (default a new ``hashlib.sha256()``) in
    16 MiB blocks and return it (``.hexdigest()`` for the digest)."""
    h = h if h is not None else hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return h


def git_hash() -> str | None:
    """Commit hash of the memgeo source tree, or ``None`` if it is not a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """Versions, seed, git hash, command line and time: what is needed to reproduce a run."""
    import torch

    from memgeo import __version__

    versions = {"memgeo": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__}
    for mod in ("diffusers", "sklearn", "safetensors"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # optional at this layer; record absence rather than fail
            versions[mod] = None
    return {
        "versions": versions,
        "seed": seed,
        "git_hash": git_hash(),
        "command": sys.argv,
        "platform": platform.platform(),
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
