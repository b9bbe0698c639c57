"""Prompt files (.txt / .jsonl / .csv) and the memorized-caption benchmark data."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from memgeo.data.captions import CLASS_WORDS, GENERIC_TEMPLATES, make_caption_benchmark
from memgeo.data.prompts import PromptEntry, load_prompts, write_prompts
from memgeo.errors import MemgeoError


# --- prompt files ---------------------------------------------------------------------------------
def test_txt_with_bom_comments_and_trailing_blank_lines(tmp_path):
    p = tmp_path / "p.txt"
    p.write_bytes("\ufeffa cat\n# a comment\n  a dog on a mat  \n\n\n".encode())
    entries = load_prompts(p)
    assert [e.prompt for e in entries] == ["a cat", "a dog on a mat"]
    assert [e.line for e in entries] == [1, 3]
    assert entries[0].memorized is None and entries[0].extra == {}


def test_txt_rejects_an_empty_line_with_its_number(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("a cat\n\na dog\n")
    with pytest.raises(MemgeoError, match="line 2: empty prompt"):
        load_prompts(p)


def test_jsonl_keys_and_typed_fields(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"caption": "a cat", "memorized": 1, "label": 3, "seed": 7}\n'
                 '{"Text": "a dog", "memorized": false, "note": "x"}\n', encoding="utf-8-sig")
    a, b = load_prompts(p)
    assert (a.prompt, a.memorized, a.label, a.seed) == ("a cat", True, 3, 7)
    assert (b.prompt, b.memorized, b.label, b.extra["note"]) == ("a dog", False, None, "x")


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "a"}\n{"prompt": \n', "line 2: not valid JSON"),
    ('{"prompt": "a"}\n["a"]\n', "line 2: a JSON list"),
    ('{"prompt": "a"}\n{"title": "b"}\n', "line 2 has no prompt field"),
    ('{"prompt": "a"}\n{"prompt": "  "}\n', "line 2: empty prompt"),
    ('{"prompt": 3}\n', "line 1: prompt is int"),
    ('\n{"prompt": "a"}\n', "line 1: not valid JSON"),
])
def test_jsonl_errors_name_the_line(tmp_path, content, message):
    p = tmp_path / "p.jsonl"
    p.write_text(content)
    with pytest.raises(MemgeoError, match=message):
        load_prompts(p)


def test_csv_prompt_column_extra_fields_and_errors(tmp_path):
    p = tmp_path / "p.csv"
    p.write_bytes('\ufeffid,Prompt,memorized\n1,"a cat, sitting",1\n2,a dog,0\n'.encode())
    a, b = load_prompts(p)
    assert (a.prompt, a.memorized, a.extra["id"], a.line) == ("a cat, sitting", True, "1", 2)
    assert (b.prompt, b.memorized, b.line) == ("a dog", False, 3)
    p.write_text("id,prompt\n1,a cat\n2,a dog,extra\n")
    with pytest.raises(MemgeoError, match="line 3: 3 fields"):
        load_prompts(p)
    p.write_text("id,title\n1,a cat\n")
    with pytest.raises(MemgeoError, match="no prompt field"):
        load_prompts(p)
    p.write_text("prompt,label\na cat,three\n")
    with pytest.raises(MemgeoError, match="line 2: field 'label'"):
        _ = load_prompts(p)[0].label


def test_file_level_errors(tmp_path):
    with pytest.raises(MemgeoError, match="does not exist"):
        load_prompts(tmp_path / "none.txt")
    (tmp_path / "p.yaml").write_text("a")
    with pytest.raises(MemgeoError, match="extension"):
        load_prompts(tmp_path / "p.yaml")
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(MemgeoError, match="no prompts"):
        load_prompts(tmp_path / "e.txt")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe a")
    with pytest.raises(MemgeoError, match="not UTF-8"):
        load_prompts(tmp_path / "bad.txt")


@pytest.mark.parametrize("ext", [".txt", ".jsonl", ".csv"])
def test_write_then_load_round_trip(tmp_path, ext):
    records = [{"prompt": "a cat, on a mat", "memorized": 1, "label": 3, "train_index": 12},
               PromptEntry("a dog", extra={"memorized": 0, "label": 5, "train_index": None}), "a bird"]
    path = write_prompts(tmp_path / f"p{ext}", records)
    back = load_prompts(path)
    assert [e.prompt for e in back] == ["a cat, on a mat", "a dog", "a bird"]
    if ext != ".txt":
        assert [e.memorized for e in back] == [True, False, None]
        assert [e.label for e in back] == [3, 5, None]
    with pytest.raises(MemgeoError, match="empty prompt"):
        write_prompts(tmp_path / f"q{ext}", ["ok", " "])


# --- the memorized-caption benchmark -------------------------------------------------------------
@pytest.fixture(scope="module")
def bench():
    return make_caption_benchmark(n_memorized=20, copies=5, seed=1)


def test_benchmark_sizes_and_duplicates(bench):
    n0 = bench.base_x.shape[0]
    assert n0 == 1797
    data = bench.data
    assert data.x.shape[0] == n0 - 20 + 20 * 5 == len(bench.captions)
    assert torch.equal(data.x, bench.base_x[data.source_index])
    counts = Counter(data.source_index.tolist())
    mem_idx = {p.train_index for p in bench.memorized}
    assert {i for i, c in counts.items() if c == 5} == mem_idx and len(mem_idx) == 20
    assert all(c == 1 for i, c in counts.items() if i not in mem_idx)
    assert set(counts) == set(range(n0))  # every base image is used
    assert int(data.is_duplicate.sum()) == 100


def test_benchmark_captions(bench):
    data = bench.data
    by_caption = Counter(bench.captions)
    for p in bench.memorized:
        rows = [i for i, c in enumerate(bench.captions) if c == p.prompt]
        assert len(rows) == 5 and set(data.source_index[rows].tolist()) == {p.train_index}
        assert p.prompt.split()[-1] == CLASS_WORDS[p.label] and int(data.y[rows[0]]) == p.label
        # its two distinctive words appear in no other caption
        adj, noun = p.prompt.split()[1:3]
        others = [c for c in by_caption if c != p.prompt]
        assert not any(adj in c.split() or noun in c.split() for c in others)
    assert len(bench.generic) == 10 * len(GENERIC_TEMPLATES)
    generic = {p.prompt: p.label for p in bench.generic}
    assert all(not p.memorized and p.train_index is None for p in bench.generic)
    for i, c in enumerate(bench.captions):
        if c in generic:
            assert generic[c] == int(data.y[i])
    # generic prompts are shared by many images, memorized ones by exactly one image
    assert min(by_caption[p] for p in generic) >= 20
    assert set(bench.captions) == set(generic) | {p.prompt for p in bench.memorized}
    assert Counter(p.label for p in bench.memorized) == Counter({c: 2 for c in range(10)})


def test_benchmark_is_seeded_and_validated(bench):
    again = make_caption_benchmark(n_memorized=20, copies=5, seed=1)
    assert again.captions == bench.captions
    assert make_caption_benchmark(n_memorized=20, copies=5, seed=2).captions != bench.captions
    assert [p.to_dict()["memorized"] for p in bench.prompts[:21]] == [1] * 20 + [0]
    with pytest.raises(MemgeoError, match="more than half"):
        make_caption_benchmark(n_memorized=1000)
    with pytest.raises(MemgeoError, match="at least 1"):
        make_caption_benchmark(copies=0)
