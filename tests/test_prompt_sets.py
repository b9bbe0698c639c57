"""Named prompt sets (memgeo.data.prompt_sets): the published lists in ../shared and tmp layouts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from memgeo.data.prompt_sets import (
    PROMPT_SETS,
    load_prompt_set,
    prompt_provenance,
    prompt_set_files,
    prompt_set_provenance,
    resolve_prompts,
)
from memgeo.errors import MemgeoError

SHARED_PROMPTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts"
needs_real = pytest.mark.skipif(not (SHARED_PROMPTS / "sd1_mem.txt").is_file(),
                                reason=f"published prompt lists not found in {SHARED_PROMPTS}")


def raw_lines(path: Path) -> list[bytes]:
    """Lines of a file as bytes, split on b'\\n' only, trailing empty piece dropped (independent reader)."""
    parts = path.read_bytes().split(b"\n")
    return parts[:-1] if parts[-1] == b"" else parts


def by_source(entries, name):
    return [e for e in entries if e.extra["source"] == name]


# ---------------------------------------------------------------- the published files

@needs_real
@pytest.mark.parametrize("name,n_mem,n_neg", [("sd1", 500, 500), ("sd2", 219, 500), ("rv", 90, 90),
                                              ("rv_full", 500, 90)])
def test_real_counts_labels_and_order(name, n_mem, n_neg):
    entries = load_prompt_set(name, SHARED_PROMPTS)
    assert len(entries) == n_mem + n_neg
    assert [e.extra["memorized"] for e in entries] == [1] * n_mem + [0] * n_neg
    assert [e.memorized for e in entries] == [True] * n_mem + [False] * n_neg
    mem_file, neg_file = (f.path.name for f in prompt_set_files(name, SHARED_PROMPTS))
    assert {e.extra["source"] for e in entries[:n_mem]} == {mem_file}
    assert {e.extra["source"] for e in entries[n_mem:]} == {neg_file}
    assert [e.line for e in entries[:n_mem]] == list(range(1, n_mem + 1))


@needs_real
@pytest.mark.parametrize("fname", ["sd1_mem.txt", "sd1_nmem.txt", "sd2_mem.txt", "sd2_nmem.txt", "RV_mem.txt",
                                   "RV_mem_full.txt", "RV_nmem.txt"])
def test_real_txt_lines_byte_exact(fname):
    list_name = fname.removesuffix(".txt").lower()
    entries = load_prompt_set(list_name, SHARED_PROMPTS, prefer="txt")
    raw = raw_lines(SHARED_PROMPTS / fname)
    assert {e.extra["source"] for e in entries} == {fname}
    assert entries[0].prompt.encode("utf-8") == raw[0]
    assert entries[-1].prompt.encode("utf-8") == raw[-1]
    assert [e.prompt.encode("utf-8") for e in entries] == raw
    # non-ASCII survives: as many non-ASCII prompts as raw lines holding a byte >= 0x80
    assert sum(not e.prompt.isascii() for e in entries) == sum(any(b >= 0x80 for b in r) for r in raw)


@needs_real
def test_real_non_ascii_and_file_endings():
    sd1 = load_prompt_set("sd1_mem", SHARED_PROMPTS, prefer="txt")
    assert sum(not e.prompt.isascii() for e in sd1) == 56
    assert "The Health Mastery Café with Dr. Dave" in [e.prompt for e in sd1]
    # RV_mem_full ends with a newline, the others do not: both give the full count
    assert (SHARED_PROMPTS / "RV_mem_full.txt").read_bytes().endswith(b"\n")
    assert not (SHARED_PROMPTS / "RV_mem.txt").read_bytes().endswith(b"\n")
    assert len(load_prompt_set("rv_mem_full", SHARED_PROMPTS)) == 500


@needs_real
def test_real_jsonl_metadata():
    sd1 = load_prompt_set("sd1_mem", SHARED_PROMPTS)
    assert {e.extra["source"] for e in sd1} == {"sd1_mem.jsonl"}
    first = json.loads(raw_lines(SHARED_PROMPTS / "sd1_mem.jsonl")[0])
    assert sd1[0].prompt == first["caption"]
    assert sd1[0].extra["index"] == first["index"] == 1030727993
    assert sd1[0].extra["url"] == first["url"]
    assert all(isinstance(e.extra["index"], int) and e.extra["url"].startswith("http") for e in sd1)
    # the sd1 jsonl and txt hold the same captions in the same order
    assert [e.prompt for e in sd1] == [e.prompt for e in load_prompt_set("sd1_mem", SHARED_PROMPTS, "txt")]

    sd2 = load_prompt_set("sd2_mem", SHARED_PROMPTS)
    last = json.loads(raw_lines(SHARED_PROMPTS / "sd2_mem.jsonl")[-1])
    assert sd2[-1].prompt == last["caption"] and sd2[-1].extra["overfit_type"] == last["overfit_type"]
    types = [e.extra["overfit_type"] for e in sd2]
    assert (types.count("MV"), types.count("TV")) == (4, 215)


@needs_real
def test_real_sd2_jsonl_and_txt_differ_as_documented():
    js = [e.prompt for e in load_prompt_set("sd2_mem", SHARED_PROMPTS, prefer="jsonl")]
    tx = [e.prompt for e in load_prompt_set("sd2_mem", SHARED_PROMPTS, prefer="txt")]
    assert js[0] == tx[-1]  # rotated by one
    only_js, only_tx = set(js) - set(tx), set(tx) - set(js)
    assert len(only_js) == len(only_tx) == 1
    assert only_js.pop().replace(" /", "") == only_tx.pop()


@needs_real
def test_real_provenance_hashes():
    prov = prompt_set_provenance("sd2", SHARED_PROMPTS)
    assert prov["set"] == "sd2" and prov["n_prompts"] == 719
    assert [Path(f["path"]).name for f in prov["files"]] == ["sd2_mem.jsonl", "sd2_nmem.txt"]
    for f in prov["files"]:
        assert f["sha256"] == hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest()
    assert [f["n_prompts"] for f in prov["files"]] == [219, 500]
    json.dumps(prov)  # serializable for a run folder
    # the published sd1_nmem and sd2_nmem are the same file
    a, b = prompt_set_provenance("sd1_nmem", SHARED_PROMPTS), prompt_set_provenance("sd2_nmem", SHARED_PROMPTS)
    assert a["files"][0]["sha256"] == b["files"][0]["sha256"]


# ---------------------------------------------------------------- tmp layouts

MEM_TXT = "first memorized\r\n  leading and  inner  spaces  \n#hashtag prompt\nCafé – naïve 東京"
NEG_TXT = "a negative\nanother negative\n\n"


def write_repo(root: Path) -> Path:
    """A folder laid out like rohanasthana/memorization-anisotropy: README, LICENSE, prompts/."""
    p = root / "prompts"
    p.mkdir(parents=True)
    (root / "README.md").write_text("readme")
    (p / "sd1_mem.txt").write_bytes(MEM_TXT.encode("utf-8"))
    (p / "sd1_mem.jsonl").write_bytes(
        "\n".join(json.dumps({"caption": c, "index": i, "url": f"u{i}"}, ensure_ascii=i % 2 == 0)
                  for i, c in enumerate(["first memorized", " spaced ", "Café"])).encode("utf-8"))
    (p / "sd1_nmem.txt").write_bytes(NEG_TXT.encode("utf-8"))
    (p / "RV_mem.txt").write_bytes(b"rv one\nrv two")
    (p / "RV_nmem.txt").write_bytes(b"rv neg")
    return root


def test_author_repo_layout(tmp_path):
    repo = write_repo(tmp_path / "memorization-anisotropy")
    txt = load_prompt_set("SD1", repo, prefer="txt")
    assert [e.prompt for e in txt] == ["first memorized", "  leading and  inner  spaces  ", "#hashtag prompt",
                                       "Café – naïve 東京", "a negative", "another negative"]
    assert [e.line for e in txt] == [1, 2, 3, 4, 1, 2]
    assert [e.extra["memorized"] for e in txt] == [1, 1, 1, 1, 0, 0]
    js = load_prompt_set("sd1", repo)  # jsonl preferred for the memorized list
    assert [e.prompt for e in js[:3]] == ["first memorized", " spaced ", "Café"]
    assert js[2].extra == {"index": 2, "url": "u2", "memorized": 1, "source": "sd1_mem.jsonl"}
    assert js[3].extra == {"memorized": 0, "source": "sd1_nmem.txt"}
    rv = load_prompt_set("rv", repo)
    assert [(e.prompt, e.memorized) for e in rv] == [("rv one", True), ("rv two", True), ("rv neg", False)]


def test_wen_layout_and_txt_fallback(tmp_path):
    ex = tmp_path / "diffusion_memorization" / "examples"
    ex.mkdir(parents=True)
    (ex / "sdv1_500_memorized.jsonl").write_text('{"caption": "a", "index": 7, "url": "x"}\n')
    for prefer in ("jsonl", "txt"):  # only a jsonl there: both preferences read it
        got = load_prompt_set("sd1_mem", tmp_path / "diffusion_memorization", prefer=prefer)
        assert [(e.prompt, e.extra["index"], e.extra["source"]) for e in got] == [("a", 7, "sdv1_500_memorized.jsonl")]
    only_txt = tmp_path / "t"
    only_txt.mkdir()
    (only_txt / "sd2_mem.txt").write_text("x\ny")
    assert [e.extra["source"] for e in load_prompt_set("sd2_mem", only_txt)] == ["sd2_mem.txt"] * 2


def test_memgeo_data_resolution(tmp_path, monkeypatch):
    direct = tmp_path / "direct"
    direct.mkdir()
    (direct / "RV_nmem.txt").write_text("direct prompt")
    monkeypatch.setenv("MEMGEO_DATA", str(direct))
    assert [e.prompt for e in load_prompt_set("rv_nmem")] == ["direct prompt"]
    (direct / "prompts").mkdir()
    (direct / "prompts" / "RV_nmem.txt").write_text("subfolder prompt")
    assert [e.prompt for e in load_prompt_set("rv_nmem")] == ["subfolder prompt"]  # prompts/ wins
    assert [e.prompt for e in resolve_prompts("rv_nmem")] == ["subfolder prompt"]
    monkeypatch.delenv("MEMGEO_DATA")
    with pytest.raises(MemgeoError, match="MEMGEO_DATA is not set"):
        load_prompt_set("rv_nmem")
    monkeypatch.setenv("MEMGEO_DATA", str(tmp_path / "nope"))
    with pytest.raises(MemgeoError, match="is not a folder"):
        load_prompt_set("rv_nmem")


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(MemgeoError, match="unknown prompt set 'sd3'.*sd1, sd2, rv, rv_full"):
        load_prompt_set("sd3", tmp_path)
    with pytest.raises(MemgeoError, match="prompt folder .* does not exist"):
        load_prompt_set("sd1", tmp_path / "missing")
    monkeypatch.setenv("MEMGEO_DATA", str(tmp_path))
    with pytest.raises(MemgeoError) as exc:
        load_prompt_set("sd1_nmem")
    msg = str(exc.value)
    assert str(tmp_path / "prompts" / "sd1_nmem.txt") in msg and str(tmp_path / "sd1_nmem.txt") in msg
    assert "MEMGEO_DATA" in msg and "\n" not in msg
    (tmp_path / "sd1_nmem.txt").write_text("one\n\nthree\n")
    with pytest.raises(MemgeoError, match=r"sd1_nmem.txt line 2: empty prompt"):
        load_prompt_set("sd1_nmem")
    (tmp_path / "sd1_nmem.txt").write_text("one\n   \nthree")
    with pytest.raises(MemgeoError, match=r"line 2: empty prompt"):
        load_prompt_set("sd1_nmem")
    (tmp_path / "sd1_nmem.txt").write_bytes(b"caf\xe9")
    with pytest.raises(MemgeoError, match="not UTF-8"):
        load_prompt_set("sd1_nmem")
    (tmp_path / "sd2_mem.jsonl").write_text('{"caption": "a", "memorized": 0}')
    with pytest.raises(MemgeoError, match="would be overwritten"):
        load_prompt_set("sd2_mem")


def test_resolve_prompts(tmp_path):
    repo = write_repo(tmp_path / "repo")
    f = tmp_path / "mine.txt"
    f.write_text("# a comment\n  plain prompt  \n")
    got = resolve_prompts(str(f))  # a file: load_prompts as before (strips, skips comments)
    assert [(e.prompt, e.line, e.extra) for e in got] == [("plain prompt", 2, {})]
    got = resolve_prompts(f"rv:{repo}")
    assert [e.prompt for e in got] == ["rv one", "rv two", "rv neg"]
    assert [e.prompt for e in resolve_prompts(f"sd1_mem:{repo / 'prompts'}", prefer="txt")][2] == "#hashtag prompt"
    with pytest.raises(MemgeoError) as exc:
        resolve_prompts("no_such_thing.txt")
    msg = str(exc.value)
    assert "neither an existing file nor a prompt set" in msg and "\n" not in msg
    assert all(name in msg for name in PROMPT_SETS)
    with pytest.raises(MemgeoError, match="empty folder"):
        resolve_prompts("sd1:")


def test_prompt_provenance(tmp_path):
    repo = write_repo(tmp_path / "repo")
    prov = prompt_provenance(f"sd1:{repo}", prefer="txt")
    files = prov["files"]
    assert [Path(x["path"]) for x in files] == [(repo / "prompts" / n).resolve() for n in ("sd1_mem.txt",
                                                                                           "sd1_nmem.txt")]
    assert files[0]["sha256"] == hashlib.sha256(MEM_TXT.encode("utf-8")).hexdigest()
    assert files[1]["sha256"] == hashlib.sha256(NEG_TXT.encode("utf-8")).hexdigest()
    assert [x["n_prompts"] for x in files] == [4, 2] and prov["n_prompts"] == 6
    plain = prompt_provenance(str(repo / "prompts" / "RV_mem.txt"))
    assert plain["set"] is None and plain["n_prompts"] == 2
    assert plain["files"][0]["sha256"] == hashlib.sha256(b"rv one\nrv two").hexdigest()


def test_only_newline_ends_a_line(tmp_path):
    # str.splitlines would also split at these; a published line must stay one prompt
    (tmp_path / "RV_nmem.txt").write_bytes("form\x0cfeed\nline\u2028sep\x85end\nlast\r".encode("utf-8"))
    assert [e.prompt for e in load_prompt_set("rv_nmem", tmp_path)] == ["form\x0cfeed", "line\u2028sep\x85end", "last"]
