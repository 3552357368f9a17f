"""Preprocessing at scale on the real fixture: partitions on worker processes, several machines,
resume, merge (byte-identical to one process) or a blend file, stale temporaries of a dead run;
one-line errors for damaged inputs (#15 item 9)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from megaindex.data.partitions import plan_partitions
from megaindex.data.preprocess import PreprocessError, preprocess

FIX = Path(__file__).parent / "fixtures"
TOK = FIX / "tokenizer.model"
SRC = FIX / "corpus/pretrain.jsonl"


def _tool():
    spec = importlib.util.spec_from_file_location("preprocess_data", Path(__file__).parents[1] / "tools/preprocess_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A plain file (cut into pieces) and a .gz file (one piece): the fixture corpus twice."""
    tmp = tmp_path_factory.mktemp("scale")
    gz = tmp / "more.jsonl.gz"
    gz.write_bytes(gzip.compress(SRC.read_bytes()))
    single = tmp / "single"
    st = preprocess([SRC, gz], single, TOK, workers=0, progress=False)
    return tmp, [SRC, gz], single, st


def _same(a: Path, b: Path) -> bool:
    return all(Path(f"{a}{e}").read_bytes() == Path(f"{b}{e}").read_bytes() for e in (".bin", ".idx"))


def test_partitions_on_workers_merge_to_the_single_process_bytes(inputs):
    tmp, srcs, single, st1 = inputs
    plan = plan_partitions(srcs, 5)
    assert 4 <= len(plan) <= 5 and plan[-1][-1] == (str(srcs[1]), 0, None)  # about 5; the .gz is one piece
    cuts = [u for part in plan for u in part if u[0] == str(SRC)]
    assert cuts[0][1] == 0 and cuts[-1][2] == SRC.stat().st_size
    assert all(a[2] == b[1] for a, b in zip(cuts, cuts[1:]))  # contiguous, cut at line starts:
    data = SRC.read_bytes()
    assert all(data[u[1] - 1:u[1]] == b"\n" for u in cuts[1:])
    st = preprocess(srcs, tmp / "merged", TOK, workers=2, partitions=5, progress=False)
    assert _same(tmp / "merged", single) and st.tokens == st1.tokens and st.documents == 42 and st.partitions == len(plan)
    assert not list(tmp.glob("merged.part*"))  # partitions removed after the merge


def test_machines_resume_and_blend_file(inputs):
    tmp, srcs, single, st1 = inputs
    out = tmp / "multi"
    n = len(plan_partitions(srcs, 6))
    a = preprocess(srcs, out, TOK, workers=1, partitions=6, partition=(0, 2), progress=False)  # machine 0: 0, 2, 4
    mine = [f"multi.part{k:05d}-of-{n:05d}.json" for k in range(0, n, 2)]
    assert sorted(p.name for p in tmp.glob("multi.part*.json")) == mine
    assert not Path(f"{out}.bin").exists() and a.partitions == n
    b = preprocess(srcs, out, TOK, workers=2, partitions=6, partition=(1, 2), progress=False)  # machine 1: 1, 3, 5
    assert b.partitions_reused == len(mine) and not Path(f"{out}.bin").exists()  # merging is a separate, last step
    c = preprocess(srcs, out, TOK, workers=2, partitions=6, output="blend", progress=False)
    assert c.partitions_reused == n and c.tokens == st1.tokens  # nothing redone: every partition resumed
    lines = [x for x in Path(f"{out}.blend").read_text().splitlines() if not x.startswith("#")]
    assert lines == [f"multi.part{k:05d}-of-{n:05d}" for k in range(n)]
    from megaindex.data.blend import parse_blend

    paths, weights = parse_blend([f"@{out}.blend"], "data.data_path")
    assert weights is None and all(Path(p + ".idx").is_file() for p in paths)
    preprocess(srcs, out, TOK, workers=1, partitions=6, progress=False)  # merge the finished partitions
    assert _same(out, single)


def test_bad_line_in_a_later_partition_names_its_line_and_a_rerun_resumes(tmp_path):
    lines = SRC.read_text().splitlines()
    lines[16] = '{"text": "lone surrogate \\ud800 here"}'
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(PreprocessError, match=rf"{bad}:17: invalid Unicode: field \"text\" holds a lone surrogate escape \(\\ud800 at character 15\)"):
        preprocess([bad], tmp_path / "w", TOK, workers=2, partitions=4, progress=False)  # from a worker process
    assert not list(tmp_path.glob("w.*tmp*"))  # the stopped workers' temporaries are gone
    with pytest.raises(PreprocessError, match=rf"{bad}:17: invalid Unicode"):
        preprocess([bad], tmp_path / "o", TOK, workers=1, partitions=4, progress=False)  # partitions in order
    finished = len(list(tmp_path.glob("o.part*.json")))
    assert finished >= 1  # the partitions before the bad line
    st = preprocess([bad], tmp_path / "o", TOK, workers=2, partitions=4, skip_bad=True, progress=False)
    assert st.partitions_reused == finished  # resumed, not redone
    assert st.documents == 20 and dict(st.skipped) == {"invalid Unicode: field \"text\" holds a lone surrogate escape": 1}
    with pytest.raises(PreprocessError, match=rf"{bad}:17: invalid Unicode"):  # in-process path: same message
        preprocess([bad], tmp_path / "p", TOK, workers=0, progress=False)


def test_stale_temporaries_of_a_dead_run_are_removed(tmp_path):
    proc = subprocess.Popen(["true"])
    proc.wait()  # its pid is free now: a "dead run"
    host = socket.gethostname()
    stale = [tmp_path / f"ds.part00001-of-00016.tmp-{host}-{proc.pid}.bin", tmp_path / f"ds.tmp{proc.pid}.bin"]
    alive = tmp_path / f"ds.part00002-of-00016.tmp-{host}-{os.getpid()}.bin"
    other_host = tmp_path / f"ds.part00003-of-00016.tmp-otherhost-{proc.pid}.bin"
    for p in stale + [alive, other_host]:
        p.write_bytes(b"x" * 1000)
    preprocess([SRC], tmp_path / "ds", TOK, workers=0, progress=False)
    assert not any(p.exists() for p in stale)
    assert alive.exists() and other_host.exists()  # a live process's and another machine's are left alone


def test_damaged_inputs_are_one_line_errors(tmp_path, capsys):
    main = _tool()
    trunc = tmp_path / "trunc.jsonl.gz"
    trunc.write_bytes(gzip.compress(SRC.read_bytes())[:5000])
    notgz = tmp_path / "plain.jsonl.gz"
    notgz.write_bytes(SRC.read_bytes()[:3000])
    notsp = tmp_path / "tokenizer.model"
    notsp.write_text(json.dumps({"model": "not sentencepiece"}))
    cases = {
        "truncated": ([str(trunc), "-o", str(tmp_path / "a"), "--tokenizer", str(TOK)],
                      f"{trunc}: truncated (it ends before the gzip end marker)"),
        "not gzip": ([str(notgz), "-o", str(tmp_path / "b"), "--tokenizer", str(TOK), "--workers", "1"],
                     f"{notgz}: not a valid gzip file"),
        "unwritable": ([str(SRC), "-o", "/proc/megaindex-test/ds", "--tokenizer", str(TOK)],
                       "cannot write the output /proc/megaindex-test/ds.bin/.idx: /proc/megaindex-test:"),
        "not sentencepiece": ([str(SRC), "-o", str(tmp_path / "c"), "--tokenizer", str(notsp)],
                              f"{notsp} is not a SentencePiece model"),
    }
    for name, (argv, want) in cases.items():
        assert main(argv + ["--quiet"]) == 1, name
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {want}") and "\n" not in err, (name, err)
        assert "Traceback" not in err
    assert not list(tmp_path.glob("a*")) and not list(tmp_path.glob("b*"))  # nothing half-written


def test_a_worker_dies_on_sigterm_whatever_handler_its_parent_had(monkeypatch):
    """Pool.terminate() stops workers with SIGTERM; a worker forked under a handler that only records it (the
    trainer's PreemptionWatcher) survived it, and the parent's join hung (CI, 2026-11-28): _init resets it."""
    import signal

    from megaindex.data import partitions, preprocess as pp

    monkeypatch.setattr(pp, "_init_worker", lambda *a: None)  # the tokenizer is not what this is about
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in partitions.STOP_SIGNALS}
    try:
        partitions._init(None, str(TOK), 1)
        assert all(signal.getsignal(sig) == signal.SIG_DFL for sig in partitions.STOP_SIGNALS)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
