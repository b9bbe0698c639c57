"""Prompt files: one prompt per line (.txt), JSON lines (.jsonl) or a table (.csv).

In .jsonl and .csv the prompt is the field named ``caption``, ``prompt`` or ``text`` (first found,
case-insensitive); other fields are kept in :attr:`PromptEntry.extra`, and the common ones are
parsed on request: ``memorized`` (0/1/true/false), ``label`` (int), ``seed`` (int). A UTF-8 byte
order mark is stripped. Empty or malformed lines are rejected with their line number; nothing is
silently skipped (except blank lines at the very end of a file and, in .txt, ``#`` comment lines).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memgeo.errors import MemgeoError
from memgeo.io import atomic_write_text

PROMPT_KEYS = ("caption", "prompt", "text")
FORMATS = (".txt", ".jsonl", ".csv")


@dataclass(frozen=True)
class PromptEntry:
    """One prompt and the fields that came with it.

    Attributes
    ----------
    prompt : str
    line : int
        1-based line of the file it came from (0 when built in memory).
    extra : dict
        Every other field of its .jsonl object or .csv row (csv values are strings).
    """

    prompt: str
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def _field(self, key: str, parse, default):
        if key not in self.extra or self.extra[key] in (None, ""):
            return default
        try:
            return parse(self.extra[key])
        except (TypeError, ValueError) as exc:
            raise MemgeoError(f"line {self.line}: field {key!r} = {self.extra[key]!r} is not valid ({exc})",
                              f"fix the {key} value") from exc

    @property
    def memorized(self) -> bool | None:
        """The ``memorized`` field as a bool (accepts 0/1, true/false, yes/no), or None if absent."""
        return self._field("memorized", _parse_bool, None)

    @property
    def label(self) -> int | None:
        """The ``label`` field as an int, or None if absent."""
        return self._field("label", _parse_int, None)

    @property
    def seed(self) -> int | None:
        """The ``seed`` field as an int, or None if absent."""
        return self._field("seed", _parse_int, None)

    def to_dict(self) -> dict[str, Any]:
        """``{"prompt": ..., **extra}``."""
        return {"prompt": self.prompt, **self.extra}


def _parse_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "1.0"):
        return True
    if s in ("0", "false", "no", "0.0"):
        return False
    raise ValueError("expected 0/1 or true/false")


def _parse_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("expected an integer")
    f = float(v)
    if not f.is_integer():
        raise ValueError("expected an integer")
    return int(f)


def _prompt_key(keys: Iterable[str], where: str) -> str:
    lower = {k.lower(): k for k in keys}
    for k in PROMPT_KEYS:
        if k in lower:
            return lower[k]
    raise MemgeoError(f"{where} has no prompt field (fields: {', '.join(map(str, keys)) or 'none'})",
                      f"name the prompt field one of {', '.join(PROMPT_KEYS)}")


def _checked(prompt: Any, line: int, path: Path) -> str:
    if not isinstance(prompt, str):
        raise MemgeoError(f"{path} line {line}: prompt is {type(prompt).__name__}, not text", "quote the prompt")
    prompt = prompt.strip()
    if not prompt:
        raise MemgeoError(f"{path} line {line}: empty prompt", "remove the line or write a prompt")
    return prompt


def load_prompts(path: str | os.PathLike[str]) -> list[PromptEntry]:
    """Read a prompt file (.txt, .jsonl or .csv; see the module docstring).

    Raises
    ------
    MemgeoError
        Missing file, unknown extension, not UTF-8, no prompts, or an empty/malformed line (named).
    """
    path = Path(path)
    if not path.is_file():
        raise MemgeoError(f"prompt file {path} does not exist", "check --prompts")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise MemgeoError(f"prompt file {path} has extension {suffix!r}", f"use one of {', '.join(FORMATS)}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MemgeoError(f"prompt file {path} is not UTF-8 ({exc})", "save it as UTF-8") from exc
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if suffix == ".txt":
        entries = [PromptEntry(_checked(s, i, path), i) for i, s in enumerate(lines, 1)
                   if not s.lstrip().startswith("#")]
    elif suffix == ".jsonl":
        entries = []
        for i, s in enumerate(lines, 1):
            prompt, extra = split_jsonl_prompt(s, f"{path} line {i}")
            entries.append(PromptEntry(_checked(prompt, i, path), i, extra))
    else:
        entries = _read_csv(lines, path)
    if not entries:
        raise MemgeoError(f"prompt file {path} holds no prompts", "add at least one prompt")
    return entries


def split_jsonl_prompt(line: str, where: str, fix_json: str = "write one JSON object per line",
                       fix_object: str = 'write {"prompt": "..."} per line') -> tuple[Any, dict[str, Any]]:
    """One .jsonl line -> (the raw value of its prompt field, the other fields); one-line errors naming ``where``."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MemgeoError(f"{where}: not valid JSON ({exc.msg})", fix_json) from exc
    if not isinstance(obj, dict):
        raise MemgeoError(f"{where}: a JSON {type(obj).__name__}, not an object", fix_object)
    key = _prompt_key(obj.keys(), where)
    return obj[key], {k: v for k, v in obj.items() if k != key}


def _read_csv(lines: list[str], path: Path) -> list[PromptEntry]:
    if not lines:
        return []
    reader = csv.reader(io.StringIO("\n".join(lines) + "\n"))
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise MemgeoError(f"{path} line {reader.line_num}: malformed CSV ({exc})", "fix the quoting") from exc
    header = [h.strip() for h in rows[0]]
    key = _prompt_key(header, f"{path} header (line 1)")
    col = header.index(key)
    entries = []
    # csv rows may span lines through quoted newlines; count physical lines to name the right one.
    line_no = 1 + sum(cell.count("\n") for cell in rows[0])
    for row in rows[1:]:
        line_no += 1
        if len(row) != len(header):
            raise MemgeoError(f"{path} line {line_no}: {len(row)} fields, header has {len(header)}",
                              "quote prompts that contain commas")
        extra = {h: v for h, v in zip(header, row) if h != key}
        entries.append(PromptEntry(_checked(row[col], line_no, path), line_no, extra))
        line_no += sum(cell.count("\n") for cell in row)
    return entries


def write_prompts(path: str | os.PathLike[str], prompts: Iterable[str | PromptEntry | Mapping[str, Any]]) -> Path:
    """Atomically write prompts as .txt (prompt only), .jsonl or .csv (all fields), by the extension.

    Each item is a prompt string, a :class:`PromptEntry` or a mapping with a ``prompt`` key.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise MemgeoError(f"prompt file {path} has extension {suffix!r}", f"use one of {', '.join(FORMATS)}")
    records: list[dict[str, Any]] = []
    for item in prompts:
        if isinstance(item, str):
            rec = {"prompt": item}
        elif isinstance(item, PromptEntry):
            rec = item.to_dict()
        else:
            rec = dict(item)
            if "prompt" not in rec:
                rec["prompt"] = rec.pop(_prompt_key(rec.keys(), "a prompt record"))
        _checked(rec["prompt"], len(records) + 1, path)
        if "\n" in rec["prompt"] and suffix == ".txt":
            raise MemgeoError(f"prompt {len(records) + 1} contains a newline", "use .jsonl or .csv")
        records.append(rec)
    if suffix == ".txt":
        text = "".join(r["prompt"] + "\n" for r in records)
    elif suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        keys = ["prompt"] + sorted({k for r in records for k in r if k != "prompt"})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for r in records:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
        text = buf.getvalue()
    return atomic_write_text(path, text)


__all__ = ["FORMATS", "PROMPT_KEYS", "PromptEntry", "load_prompts", "write_prompts"]
