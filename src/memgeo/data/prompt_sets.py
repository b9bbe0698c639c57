"""The published memorized / non-memorized prompt lists, loaded by name.

memgeo ships none of these files; they are read from disk. The names and the files they stand for
(as published in rohanasthana/memorization-anisotropy and Dongjae0324/sharpness_memorization_diffusion,
folder ``prompts/``; YuxinWenRick/diffusion_memorization holds the SD 1 memorized list as
``examples/sdv1_500_memorized.jsonl``):

=============  ==============================================  =================
name           memorized (``memorized`` = 1)                   negatives (= 0)
=============  ==============================================  =================
``sd1``        ``sd1_mem.jsonl`` or ``sd1_mem.txt`` (500)      ``sd1_nmem.txt`` (500)
``sd2``        ``sd2_mem.jsonl`` or ``sd2_mem.txt`` (219)      ``sd2_nmem.txt`` (500)
``rv``         ``RV_mem.txt`` (90)                             ``RV_nmem.txt`` (90)
``rv_full``    ``RV_mem_full.txt`` (500)                       ``RV_nmem.txt`` (90)
=============  ==============================================  =================

``rv_full`` is unbalanced: its negative list is the same 90-prompt ``RV_nmem.txt`` as ``rv``.
Each list is also a set on its own: ``sd1_mem``, ``sd1_nmem``, ``sd2_mem``, ``sd2_nmem``,
``rv_mem``, ``rv_mem_full``, ``rv_nmem``. Names are case-insensitive.

Where the files are looked for (the first folder holding a list wins, per list):

- ``root`` given: ``root``, ``root/prompts``, ``root/examples`` (so a clone of an author's
  repository can be passed as is);
- otherwise ``$MEMGEO_DATA/prompts``, ``$MEMGEO_DATA``, ``$MEMGEO_DATA/examples``.

Reading rules (stricter than :func:`memgeo.data.prompts.load_prompts`, which strips whitespace
and skips ``#`` lines; a benchmark list must come back exactly as published):

- .txt: one prompt per line, split on ``\\n`` only; a ``\\r`` before it is dropped. Nothing else is
  changed: leading/trailing spaces, ``#`` at the start, non-ASCII text all stay. A UTF-8 byte
  order mark at the start of the file is dropped. Empty lines at the very end of the file are
  ignored (the published files end with or without a final newline); an empty or whitespace-only
  line anywhere else is an error naming the file and line (the published files have none).
- .jsonl: one JSON object per line, the prompt in ``caption``/``prompt``/``text``; its other fields
  (``index``, ``url``, ``overfit_type``) are kept in ``extra``.

Every entry gets ``extra["memorized"]`` (1 or 0) and ``extra["source"]`` (the file name), and
``line`` is its 1-based line in that file. Entries come memorized list first, then negatives, each
in file order.

``.jsonl`` versus ``.txt`` for the memorized lists: ``prefer="jsonl"`` (default) reads the .jsonl
when it is there, for its metadata. For ``sd1`` both files hold the same 500 captions in the same
order. For ``sd2`` they do not quite: ``sd2_mem.txt`` is ``sd2_mem.jsonl`` rotated by one (the
jsonl's first caption is the txt's last) and one caption lost a ``" /"`` ("DEATH METAL! (Funny
Unicorn / Rainbow ..." in the jsonl). The authors' detection scripts read the .txt files; pass
``prefer="txt"`` to get exactly those prompts.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from memgeo.data.mnist import DATA_ENV
from memgeo.data.prompts import PromptEntry, load_prompts, split_jsonl_prompt
from memgeo.errors import MemgeoError

Prefer = Literal["jsonl", "txt"]

#: For each single list: candidate file names, jsonl variants first, and whether it is memorized.
PROMPT_LISTS: dict[str, tuple[tuple[str, ...], int]] = {
    "sd1_mem": (("sd1_mem.jsonl", "sdv1_500_memorized.jsonl", "sd1_mem.txt"), 1),
    "sd1_nmem": (("sd1_nmem.txt",), 0),
    "sd2_mem": (("sd2_mem.jsonl", "sd2_mem.txt"), 1),
    "sd2_nmem": (("sd2_nmem.txt",), 0),
    "rv_mem": (("RV_mem.txt",), 1),
    "rv_mem_full": (("RV_mem_full.txt",), 1),
    "rv_nmem": (("RV_nmem.txt",), 0),
}

#: Named sets: the lists they concatenate, memorized first.
PROMPT_SETS: dict[str, tuple[str, ...]] = {
    "sd1": ("sd1_mem", "sd1_nmem"),
    "sd2": ("sd2_mem", "sd2_nmem"),
    "rv": ("rv_mem", "rv_nmem"),
    "rv_full": ("rv_mem_full", "rv_nmem"),
    **{name: (name,) for name in PROMPT_LISTS},
}


@dataclass(frozen=True)
class PromptSetFile:
    """One file of a named set, as found on disk.

    Attributes
    ----------
    list_name : str
        The single list it provides, e.g. ``"sd2_mem"``.
    path : Path
        Absolute path of the file read.
    memorized : int
        1 for a memorized list, 0 for negatives.
    """

    list_name: str
    path: Path
    memorized: int


def prompt_set_names() -> list[str]:
    """All names :func:`load_prompt_set` accepts, paired sets first."""
    return list(PROMPT_SETS)


def _canonical(name: str) -> str:
    key = name.strip().lower()
    if key not in PROMPT_SETS:
        raise MemgeoError(f"unknown prompt set {name!r}", f"choose one of: {', '.join(PROMPT_SETS)}")
    return key


def _search_dirs(root: str | os.PathLike[str] | None) -> list[Path]:
    if root is not None:
        base = Path(root).expanduser()
        if not base.is_dir():
            raise MemgeoError(f"prompt folder {str(base)!r} does not exist",
                              "pass the folder holding sd1_mem.txt etc. (or an author's repository clone)")
        return [base, base / "prompts", base / "examples"]
    env = os.environ.get(DATA_ENV, "").strip()
    if not env:
        raise MemgeoError(f"no prompt folder given and {DATA_ENV} is not set",
                          f"set {DATA_ENV} to a folder holding prompts/sd1_mem.txt etc., or write NAME:FOLDER")
    base = Path(env).expanduser()
    if not base.is_dir():
        raise MemgeoError(f"{DATA_ENV}={env!r} is not a folder",
                          f"point {DATA_ENV} at the data folder (prompt lists in its prompts/ subfolder)")
    return [base / "prompts", base, base / "examples"]


def _candidates(list_name: str, prefer: Prefer) -> tuple[str, ...]:
    names = PROMPT_LISTS[list_name][0]
    if prefer == "txt":
        names = tuple(n for n in names if n.endswith(".txt")) + tuple(n for n in names if not n.endswith(".txt"))
    elif prefer != "jsonl":
        raise MemgeoError(f"prefer={prefer!r} is not a prompt file kind", "use prefer='jsonl' or 'txt'")
    return names


def prompt_set_files(name: str, root: str | os.PathLike[str] | None = None,
                     prefer: Prefer = "jsonl") -> list[PromptSetFile]:
    """Locate the files of a named set (see the module docstring for the search order).

    Raises
    ------
    MemgeoError
        Unknown name, missing folder, ``MEMGEO_DATA`` unset, or a list found in none of the folders
        (the message names every path tried).
    """
    key = _canonical(name)
    dirs = _search_dirs(root)
    found = []
    for list_name in PROMPT_SETS[key]:
        names = _candidates(list_name, prefer)
        path = next((d / n for d in dirs for n in names if (d / n).is_file()), None)
        if path is None:
            tried = ", ".join(str(d / n) for d in dirs for n in names)
            raise MemgeoError(f"prompt list {list_name} of set {key!r} not found (tried {tried})",
                              f"copy the authors' prompts/ folder to ${DATA_ENV}/prompts, set {DATA_ENV}, "
                              "or pass the folder (NAME:FOLDER)")
        found.append(PromptSetFile(list_name, path.resolve(), PROMPT_LISTS[list_name][1]))
    return found


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MemgeoError(f"prompt file {path} is not UTF-8 ({exc})", "use the file as published") from exc


def _read_list(raw: bytes, f: PromptSetFile) -> list[PromptEntry]:
    path = f.path
    lines = [s[:-1] if s.endswith("\r") else s for s in _decode(raw, path).split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise MemgeoError(f"prompt file {path} holds no prompts", "use the file as published")
    entries = []
    for i, s in enumerate(lines, 1):
        if not s.strip():
            raise MemgeoError(f"{path} line {i}: empty prompt inside the list", "remove the blank line")
        extra: dict[str, Any] = {}
        if path.suffix.lower() == ".jsonl":
            s, obj = split_jsonl_prompt(s, f"{path} line {i}", "use the file as published",
                                        "use the file as published")
            if not isinstance(s, str) or not s.strip():
                raise MemgeoError(f"{path} line {i}: prompt is {s!r}, not text", "use the file as published")
            clash = sorted({"memorized", "source"} & obj.keys())
            if clash:
                raise MemgeoError(f"{path} line {i}: field(s) {clash} would be overwritten",
                                  "rename them; memorized and source are set from the list")
            extra.update(obj)
        extra["memorized"] = f.memorized
        extra["source"] = path.name
        entries.append(PromptEntry(s, i, extra))
    return entries


def _load(name: str, root: str | os.PathLike[str] | None,
          prefer: Prefer) -> tuple[list[PromptEntry], list[dict[str, Any]]]:
    entries: list[PromptEntry] = []
    files = []
    for f in prompt_set_files(name, root, prefer):
        raw = f.path.read_bytes()
        got = _read_list(raw, f)
        entries += got
        files.append({"list": f.list_name, "path": str(f.path), "sha256": hashlib.sha256(raw).hexdigest(),
                      "memorized": f.memorized, "n_prompts": len(got)})
    return entries, files


def load_prompt_set(name: str, root: str | os.PathLike[str] | None = None,
                    prefer: Prefer = "jsonl") -> list[PromptEntry]:
    """Load a named benchmark set: memorized list then negatives, in file order.

    Parameters
    ----------
    name : str
        One of :data:`PROMPT_SETS` (case-insensitive), e.g. ``"sd1"`` or ``"sd2_mem"``.
    root : path-like, optional
        Folder holding the files (or an author's repository with a ``prompts/`` folder); default
        ``$MEMGEO_DATA/prompts``, then ``$MEMGEO_DATA``.
    prefer : {"jsonl", "txt"}
        Which variant of a memorized list to read when both exist (they differ for ``sd2``: see the
        module docstring).

    Returns
    -------
    list of PromptEntry
        ``extra["memorized"]`` 1/0, ``extra["source"]`` the file name, plus the .jsonl fields.

    Raises
    ------
    MemgeoError
        Unknown name, missing folder or file (naming the paths tried), not UTF-8, blank or malformed line.
    """
    return _load(name, root, prefer)[0]


def prompt_set_provenance(name: str, root: str | os.PathLike[str] | None = None,
                          prefer: Prefer = "jsonl") -> dict[str, Any]:
    """Which files a named set reads, with their sha256, for a run folder's record.

    Returns
    -------
    dict
        ``{"set": name, "prefer": prefer, "n_prompts": int, "files": [{"list", "path", "sha256",
        "memorized", "n_prompts"}, ...]}`` (JSON-serializable; paths absolute).
    """
    entries, files = _load(name, root, prefer)
    return {"set": _canonical(name), "prefer": prefer, "n_prompts": len(entries), "files": files}


def _split_spec(spec: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME:ROOT`` with a known NAME -> (name, root); anything else raises."""
    name, sep, root = spec.partition(":")
    if name.strip().lower() not in PROMPT_SETS:
        raise MemgeoError(f"--prompts {spec!r} is neither an existing file nor a prompt set",
                          f"pass a .txt/.jsonl/.csv file or one of: {', '.join(PROMPT_SETS)} (NAME or NAME:FOLDER)")
    if sep and not root:
        raise MemgeoError(f"prompt set spec {spec!r} has an empty folder after ':'", f"write {name} or {name}:FOLDER")
    return name, (root or None)


def resolve_prompts(spec: str, prefer: Prefer = "jsonl") -> list[PromptEntry]:
    """``--prompts`` value to prompts: an existing prompt file, or a set name, optionally ``NAME:FOLDER``.

    A path to a file goes to :func:`~memgeo.data.prompts.load_prompts` (as before); a known set name
    to :func:`load_prompt_set`. An existing file wins over a set of the same name.

    Raises
    ------
    MemgeoError
        Neither an existing file nor a set name (one line listing the set names), or any error of
        the loader used.
    """
    if Path(spec).expanduser().is_file():
        return load_prompts(Path(spec).expanduser())
    name, root = _split_spec(spec)
    return load_prompt_set(name, root, prefer)


def prompt_provenance(spec: str, prefer: Prefer = "jsonl") -> dict[str, Any]:
    """Provenance of what :func:`resolve_prompts` reads for ``spec``: files, sha256, counts.

    For a plain file: ``{"set": None, "n_prompts", "files": [{"list": None, "path", "sha256",
    "memorized": None, "n_prompts"}]}``; for a set, :func:`prompt_set_provenance`.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        n = len(load_prompts(path))
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        return {"set": None, "prefer": None, "n_prompts": n,
                "files": [{"list": None, "path": str(path.resolve()), "sha256": sha, "memorized": None,
                           "n_prompts": n}]}
    name, root = _split_spec(spec)
    return prompt_set_provenance(name, root, prefer)


__all__ = [
    "PROMPT_LISTS",
    "PROMPT_SETS",
    "PromptSetFile",
    "load_prompt_set",
    "prompt_provenance",
    "prompt_set_files",
    "prompt_set_names",
    "prompt_set_provenance",
    "resolve_prompts",
]
