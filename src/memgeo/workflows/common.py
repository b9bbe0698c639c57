"""Pieces every run folder shares: resolved config, provenance, a lock, logging, safe evaluation.

Life of a run folder (:func:`run_command` around a ``run_*`` function, :func:`start_run` inside it,
called only after every input has been validated):

1. :func:`start_run` checks that ``--out`` can be written, creates it, takes the lock
   ``OUT/.memgeo.lock`` (created exclusively, holding the writer's pid; a lock left by a dead
   process is taken over) and writes the in-progress config ``OUT/.memgeo-run.json`` that resumable
   runs compare a rerun against.
2. The run writes its results (each file atomically).
3. On success :func:`run_command` writes ``config.json`` and ``provenance.json`` next to the
   results, removes the in-progress config and releases the lock. On a refusal
   (:class:`MemgeoError`) before any result was written, the folder is left as it was (a folder
   the run created is removed), so a refused rerun never overwrites a finished run's config.
   After a crash the in-progress config and the finished records stay for the resume.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from matplotlib.figure import Figure

from memgeo.errors import MemgeoError
from memgeo.models.base import NULL_CLASS, DiffusionModel
from memgeo.io import make_folder, native_order, provenance, read_json_file, write_failure, write_json
from memgeo.memorization import evaluate_detector
from memgeo.report import Report, save_figure


def say(msg: str) -> None:
    """One progress line on stderr (stdout stays free for machine-readable output)."""
    print(f"[memgeo {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    """One ``warning: ...`` line on stderr (the run goes on)."""
    print(f"warning: {msg}", file=sys.stderr, flush=True)


LOCK_FILE = ".memgeo.lock"
RUN_FILE = ".memgeo-run.json"
_HELD: set[Path] = set()  # lock files this process holds


@dataclass
class _Run:
    out: Path
    created: bool
    lock: Path
    config: Any
    provenance: dict[str, Any]
    before: set[str] = field(default_factory=set)


_FRAMES: list[list[_Run]] = []


def check_out(out: str | Path) -> Path:
    """Check that the folder ``out`` exists or can be created and written, without creating anything.

    Raises
    ------
    MemgeoError
        ``out`` is a file, a parent of it is a file, or the nearest existing folder is not writable.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MemgeoError(f"--out {out} exists and is not a folder", "choose a folder path")
    anc = out.absolute()
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise MemgeoError(f"cannot create --out {out}: {anc} is a file, not a folder", "choose another --out")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise MemgeoError(f"cannot write --out {out}: {anc} is not writable", "choose a writable --out folder")
    return out


def _lock_pid(lock: Path) -> int | None:
    try:
        return int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(out: Path) -> Path:
    """Take ``out/.memgeo.lock`` for this process; a lock of a live process is a :class:`MemgeoError`.

    The lock file is linked into place complete (with the pid in it), so no reader ever sees an
    empty one; a lock whose process has died (e.g. killed) is taken over.
    """
    lock = out / LOCK_FILE
    tmp = out / f".memgeo.lock.{os.getpid()}.tmp"
    try:
        tmp.write_text(f"{os.getpid()}\n")
    except OSError as exc:
        raise write_failure(tmp, exc) from exc
    try:
        for _ in range(5):
            try:
                os.link(tmp, lock)
            except FileExistsError:
                pid = _lock_pid(lock)
                if pid is None and time.time() - _mtime(lock) < 5:
                    time.sleep(0.2)  # a lock made by other means, being written: look again
                    continue
                if pid is not None and _alive(pid) and (pid != os.getpid() or lock in _HELD):
                    raise MemgeoError(f"{out} is being written by process {pid}",
                                      "wait for it to finish or choose another --out") from None
                try:  # stale: its process is gone
                    lock.unlink()
                except FileNotFoundError:
                    pass
                continue
            except OSError as exc:
                raise write_failure(lock, exc) from exc
            _HELD.add(lock)
            return lock
        raise MemgeoError(f"cannot take the lock {lock}", "remove it if no memgeo process writes into --out")
    finally:
        tmp.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def release_lock(lock: Path) -> None:
    """Remove a lock this process holds (a lock taken over by another process is left alone)."""
    _HELD.discard(lock)
    if _lock_pid(lock) == os.getpid():
        lock.unlink(missing_ok=True)


def previous_config(out: str | Path) -> dict[str, Any] | None:
    """The config of the run that last wrote ``out``: the in-progress one of an unfinished run, else
    ``config.json``; ``None`` when there is none or it is unreadable."""
    for name in (RUN_FILE, "config.json"):
        path = Path(out) / name
        if path.is_file():
            try:
                return read_json_file(path, "config file")
            except MemgeoError:
                return None
    return None


def start_run(out: str | Path, config: Any, seed: int | None, **extra: Any) -> Path:
    """Open the output folder of a run; call it after every input has been validated.

    Inside :func:`run_command`: check that ``out`` can be written, create it, take the lock and
    write the in-progress config; ``config.json`` (resolved) and ``provenance.json`` are written
    when the run succeeds. Outside it (direct use): create the folder and write both at once.
    """
    out = check_out(out)
    if not _FRAMES:
        make_folder(out)
        write_json(out / "config.json", config)
        write_json(out / "provenance.json", provenance(seed, **extra))
        return out
    created = not out.exists()
    make_folder(out)
    before = {p.name for p in out.iterdir()}
    lock = acquire_lock(out)
    run = _Run(out=out, created=created, lock=lock, config=config, provenance=provenance(seed, **extra),
               before=before - {RUN_FILE})
    _FRAMES[-1].append(run)
    write_json(out / RUN_FILE, config)
    return out


def _commit(run: _Run) -> None:
    write_json(run.out / "config.json", run.config)
    write_json(run.out / "provenance.json", run.provenance)
    (run.out / RUN_FILE).unlink(missing_ok=True)


def _abandon(run: _Run, refused: bool) -> None:
    """After a failure: a refusal that wrote no result leaves the folder as it was; a crash keeps all."""
    if not refused:
        return
    ours = {LOCK_FILE, RUN_FILE}
    now = {p.name for p in run.out.iterdir()} if run.out.is_dir() else set()
    if now - ours - run.before:
        return  # results were written: keep them (and the in-progress config) for a resume
    (run.out / RUN_FILE).unlink(missing_ok=True)
    if run.created and not (now - ours):
        release_lock(run.lock)
        shutil.rmtree(run.out, ignore_errors=True)


F = TypeVar("F", bound=Callable[..., Any])


def run_command(fn: F) -> F:
    """Decorator of the ``run_*`` workflow functions: the run-folder life cycle of the module docstring.

    Folders opened by :func:`start_run` inside ``fn`` get ``config.json`` and ``provenance.json``
    when ``fn`` returns, and their lock released however it ends.
    """
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        frame: list[_Run] = []
        _FRAMES.append(frame)
        try:
            result = fn(*args, **kwargs)
            for run in frame:
                _commit(run)
            return result
        except BaseException as exc:
            for run in frame:
                try:
                    _abandon(run, refused=isinstance(exc, MemgeoError))
                except OSError:
                    pass
            raise
        finally:
            _FRAMES.pop()
            for run in frame:
                release_lock(run.lock)

    return wrapper  # type: ignore[return-value]


# ------------------------------------------------------------------------------------ input checks
def check_point_shape(model: DiffusionModel, points: torch.Tensor, what: str = "--points") -> None:
    """Points must be (N, *data_shape) or flat (N, D) with D the model's dimension: no silent reshape.

    Raises
    ------
    MemgeoError
        Any other shape, e.g. (5, 1, 4, 16) for a (1, 8, 8) model (same number of values).
    """
    shape = tuple(int(s) for s in model.data_shape)
    dim = int(np.prod(shape))
    got = tuple(points.shape[1:])
    if got == shape or got == (dim,):
        return
    raise MemgeoError(f"{what} have per-point shape {got} but the model takes {shape} (or flat ({dim},))",
                      f"save the points as (N, {', '.join(map(str, shape))})")


def count_memory(n_values: float, itemsize: int = 4) -> float:
    """Bytes of ``n_values`` numbers of ``itemsize`` bytes."""
    return float(n_values) * itemsize


def check_prompt_tokens(model: Any, prompts: Sequence[str]) -> None:
    """Warn (one line each) when prompts are cut to the tokenizer's length or consist of unknown tokens only.

    Both silently change what the model sees: a cut prompt loses its tail, and a prompt of unknown
    tokens only conditions on the unknown token (for many models the same as the empty prompt).
    Works with Hugging Face tokenizers (``model.tokenizer``, ``model.max_length``) and memgeo caption
    models (``model.word_index``); other models are not checked.
    """
    unique = [p for p in dict.fromkeys(prompts) if isinstance(p, str)]
    cut: list[tuple[int, str]] = []
    unknown: list[str] = []
    tok = getattr(model, "tokenizer", None)
    if tok is not None and hasattr(tok, "tokenize") and getattr(model, "max_length", None):
        limit = int(model.max_length)
        for p in unique:
            if not p.strip():
                continue
            pieces = tok.tokenize(p)
            n = len(pieces) + 2  # begin and end tokens
            if n > limit:
                cut.append((n - limit, p))
            unk = getattr(tok, "unk_token", None)
            if pieces and unk is not None and all(t == unk for t in pieces):
                unknown.append(p)
    elif hasattr(model, "word_index") and hasattr(model, "config"):
        from memgeo.models.caption import UNK, caption_words

        limit = int(model.config.max_length) - 2
        for p in unique:
            words = caption_words(p)
            if len(words) > limit:
                cut.append((len(words) - limit, p))
            if words and all(w not in model.word_index or w == UNK for w in words):
                unknown.append(p)
    if cut:
        most, p = max(cut)
        warn(f"{len(cut)} prompt(s) are longer than the tokenizer's {limit} tokens and were cut: up to {most} "
             f"token(s) dropped (e.g. {_short(p)}); shorten them to keep their end")
    if unknown:
        warn(f"{len(unknown)} prompt(s) consist of tokens unknown to the tokenizer only, e.g. {_short(unknown[0])}: "
             "they condition like an empty prompt; check their spelling and language")


def _short(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def evaluate_or_reason(scores: np.ndarray, labels: np.ndarray, name: str, seed: int = 0) -> dict[str, Any]:
    """Detection metrics as a dict, or ``{"auroc": None, "reason": ...}`` when undefined (one class only)."""
    try:
        return evaluate_detector(scores, labels, name, seed=seed).to_dict()
    except MemgeoError as exc:
        return {"name": name, "auroc": None, "reason": exc.problem, "n_pos": int(np.sum(labels)),
                "n_neg": int(np.size(labels) - np.sum(labels))}


def prefixed(d: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``{prefix + key: value}`` for flat per-sample CSV columns."""
    return {f"{prefix}{k}": v for k, v in d.items()}


def figure_to_report(report: Report, fig: Figure, path: Path, *, caption: str | None = None,
                     heading: str | None = None) -> Path:
    """Save ``fig`` as a PNG at ``path`` (atomically) and embed the same image in ``report``."""
    save_figure(fig, path)
    report.add_figure(path.read_bytes(), caption=caption, heading=heading)
    return path


def masked_mean(values: torch.Tensor | np.ndarray, mask: np.ndarray) -> float | None:
    """Mean of ``values[mask]`` as a float, or ``None`` when the mask selects nothing."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    return float(v[mask].astype(float).mean())


def point_conditions(model: DiffusionModel, n: int, cond: int | None = None,
                     labels: str | None = None) -> torch.Tensor | None:
    """The (n,) condition tensor for ``--cond C`` (one class for all points) or ``--labels FILE.npy``
    (one class per point), validated against the model; ``None`` when neither is given."""
    if cond is not None and labels is not None:
        raise MemgeoError("give at most one of --cond and --labels", "drop one")
    if cond is None and labels is None:
        return None
    if model.num_classes is None:
        raise MemgeoError("a condition was given but the model is unconditional", "drop --cond / --labels")
    if labels is not None:
        p = Path(labels)
        if not p.is_file():
            raise MemgeoError(f"labels file {p} does not exist", "check --labels")
        try:
            values = torch.as_tensor(native_order(np.load(p, allow_pickle=False)))
        except (ValueError, OSError) as exc:
            raise MemgeoError(f"labels file {p} is not a readable .npy array ({exc})", "save it with numpy.save") from exc
        if values.shape != (n,):
            raise MemgeoError(f"labels file {p} has shape {tuple(values.shape)}, expected ({n},)",
                              "give one label per point")
        if values.is_floating_point() and not torch.equal(values, values.round()):
            raise MemgeoError(f"labels file {p} holds non-integer values", "save class indices")
    else:
        values = torch.full((n,), int(cond))
    values = values.long()
    bad = (values < 0) & (values != NULL_CLASS) | (values >= model.num_classes)
    if bool(bad.any()):
        raise MemgeoError(f"condition {int(values[bad][0])} is not a class of the model (0..{model.num_classes - 1})",
                          "pick valid classes")
    return values
