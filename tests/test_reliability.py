"""The reliability audit (issue 17), files/indexing/training/processes: each bad input is one `error:` line, exit 2,
nothing half-written left, and what is written honours the umask. See docs/RELIABILITY.md for the table.

How the storage failures are produced (we run as root in CI, and root ignores permission bits, so `chmod` alone
proves nothing):
- read-only folder: a real read-only tmpfs mounted on a folder under tmp_path (EROFS); without the right to mount,
  a non-root user gets `chmod 0o555` (EACCES); else the test skips.
- disk full: a subprocess with `resource.RLIMIT_FSIZE` (Python ignores SIGXFSZ, so a write past it fails with EFBIG,
  as a full disk fails with ENOSPC), and a real 64 KiB tmpfs (ENOSPC) where mounting is allowed.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pyserini_ssm.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]


def _mount(target: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    return done.returncode == 0


@contextlib.contextmanager
def _mounted(target: Path, options: str):
    target.mkdir()
    if not _mount(target, options):
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nothing can be written in: a read-only tmpfs (root), or chmod 0o555 (others)."""
    folder = tmp_path / "read-only"
    with _mounted(folder, "ro,size=64k") as mounted:
        if not mounted:
            if os.geteuid() == 0:
                pytest.skip("running as root without the right to mount a read-only tmpfs")
            folder.chmod(0o555)
        yield folder
        if not mounted:
            folder.chmod(0o755)


@pytest.fixture
def full_folder(tmp_path):
    """A 64 KiB tmpfs: writes past it fail with ENOSPC (skips where mounting is not allowed)."""
    folder = tmp_path / "full"
    with _mounted(folder, "size=64k") as mounted:
        if not mounted:
            pytest.skip("no right to mount a small tmpfs (the RLIMIT_FSIZE tests cover disk full)")
        yield folder


def _run_cli(code: str, *, fsize: int | None = None, cwd: Path | None = None, umask: int | None = None):
    """Run Python `code` in a subprocess (with this checkout importable), optionally under a file-size limit."""
    prologue = "import resource, os\n"
    if fsize is not None:
        prologue += f"resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, {fsize}))\n"
    if umask is not None:
        prologue += f"os.umask({umask})\n"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def _write_run(path: Path, docs: int = 3, queries: int = 2) -> Path:
    path.write_text("".join(f"q{q} Q0 d{d} {d + 1} {10 - d}.0 t\n" for q in range(queries) for d in range(docs)))
    return path


# ------------------------------------------------------------------------------------------ items 7, 8, 13: files


def test_atomic_output_in_a_read_only_folder_is_one_line_naming_it(read_only_folder):
    from pyserini_ssm.files import atomic_output, check_output_path

    with pytest.raises(UserError, match=f"cannot write in {read_only_folder}"):
        check_output_path(read_only_folder / "run.txt")
    with pytest.raises(UserError, match="read-only|permission"):
        with atomic_output(read_only_folder / "run.txt") as handle:
            handle.write("x")
    assert list(read_only_folder.iterdir()) == []


def test_every_writing_command_refuses_a_read_only_output_folder_up_front(read_only_folder, tmp_path):
    """fuse, search, leaderboard, index, init, train: exit 2, one line naming the folder, before any model or JVM
    (rerank goes through the same check_output_path; test_rerank_cli covers its other flags)."""
    from pyserini_ssm import fuse, index, init, leaderboard, search, train
    from pyserini_ssm.cli import run_main

    run = _write_run(tmp_path / "a.txt")
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q0 0 d0 1\nq1 0 d1 1\n")
    topics = tmp_path / "topics.tsv"
    topics.write_text("q0\thello\n")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "d0", "contents": "hello"}\n')
    commands = [
        (fuse.main, ["--runs", str(run), str(run), "--output", str(read_only_folder / "fused.txt")]),
        (search.main, ["--index", str(tmp_path), "--topics", str(topics), "--output", str(read_only_folder / "r")]),
        (leaderboard.main, [str(run), "--qrels", str(qrels), "--output", str(read_only_folder / "board.md")]),
        (index.main, ["--input", str(corpus), "--index", str(read_only_folder / "idx")]),
        (init.main, ["--model", "bert-base", "--scale", "tiny", "--output", str(read_only_folder / "m")]),
        (train.main, ["--train-jsonl", str(corpus), "--model", "bert-base", "--output", str(read_only_folder / "t")]),
    ]
    for main, argv in commands:
        stderr = _captured_stderr(lambda: run_main(main, argv))
        status, text = stderr
        assert status == 2, (main.__module__, text)
        line = _one_error_line(text)
        assert str(read_only_folder) in line, (main.__module__, line)
    assert list(read_only_folder.iterdir()) == []


def _captured_stderr(call):
    import io
    from contextlib import redirect_stderr

    buffer = io.StringIO()
    with redirect_stderr(buffer):
        status = call()
    return status, buffer.getvalue()


def test_disk_full_under_a_file_size_limit_is_one_line_and_leaves_no_temporary(tmp_path):
    """fuse writing a run bigger than RLIMIT_FSIZE allows: EFBIG -> one line naming the file and the fix."""
    run = _write_run(tmp_path / "a.txt", docs=400, queries=20)  # the fused run is about 300 KB
    done = _run_cli(f"""
        import sys
        from pyserini_ssm.cli import run_main
        from pyserini_ssm.fuse import main
        sys.exit(run_main(main, ["--runs", "{run}", "{run}", "--output", "{tmp_path / 'fused.txt'}"]))
    """, fsize=200_000)
    assert done.returncode == 2, done.stderr[-3000:]
    line = _one_error_line(done.stderr)
    assert "fused.txt" in line and "file too large" in line and "ulimit" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no .fused.txt.*.tmp left


def test_a_full_disk_is_one_line_naming_what_to_free(full_folder, tmp_path):
    from pyserini_ssm.fuse import fuse_files

    run = _write_run(tmp_path / "a.txt", docs=400, queries=20)
    with pytest.raises(UserError, match=r"no space left on the device; free space on the disk holding .*full"):
        fuse_files([run, run], str(full_folder / "fused.txt"))
    assert list(full_folder.iterdir()) == []


@pytest.mark.slow  # a subprocess importing torch and transformers: ~25 s on 2 busy cores
def test_a_full_disk_while_saving_a_model_or_a_checkpoint_is_one_line(tmp_path, bert_tokenizer_dir):
    """safetensors and torch.save hide the errno (SafetensorError '... (os error 27)', RuntimeError 'unexpected
    pos'): `files.writing` still names the failure, and the staging folder is gone. One subprocess (torch loads
    once): `init` under the limit, then a torch.save as the training checkpoints do."""
    model = tmp_path / "model"
    done = _run_cli(f"""
        import sys, torch
        from pyserini_ssm.cli import run_main
        from pyserini_ssm.errors import UserError
        from pyserini_ssm.files import writing
        from pyserini_ssm.init import main
        status = run_main(main, ["--model", "bert-base", "--scale", "tiny", "--output", "{model}",
                                 "--tokenizer", "{bert_tokenizer_dir}"])
        print("init exit", status)
        try:
            with writing("{tmp_path / 'state.pt'}"):
                torch.save(torch.zeros(100_000), "{tmp_path / 'state.pt'}")
        except UserError as error:
            print("torch.save:", error)
    """, fsize=100_000)
    assert "init exit 2" in done.stdout, done.stderr[-3000:]
    assert "file too large" in _one_error_line(done.stderr)
    assert "torch.save: cannot write" in done.stdout and "file too large" in done.stdout.splitlines()[-1]
    assert not model.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]


def test_run_main_turns_a_stray_storage_oserror_into_one_line():
    import errno

    from pyserini_ssm.cli import run_main

    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/run.txt")

    status, text = _captured_stderr(lambda: run_main(full, []))
    assert status == 2
    assert "/data/out/run.txt" in _one_error_line(text) and "free space" in text


def test_written_files_and_folders_honour_the_umask(tmp_path):
    """mkstemp makes 0600 and mkdtemp 0700: runs, models and index folders must come out as open()/mkdir make."""
    done = _run_cli(f"""
        from pyserini_ssm.files import atomic_output, make_temporary_folder
        with atomic_output("{tmp_path / 'run.txt'}") as handle:
            handle.write("q Q0 d 1 1.0 t\\n")
        folder = make_temporary_folder("{tmp_path}", ".staging.")
        print(folder)
    """, umask=0o022)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((tmp_path / "run.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE(Path(done.stdout.strip()).stat().st_mode) == 0o755
    done = _run_cli(f"""
        from pyserini_ssm.files import atomic_output
        with atomic_output("{tmp_path / 'private.txt'}") as handle:
            handle.write("x")
    """, umask=0o077)
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600


def test_an_init_checkpoint_folder_honours_the_umask(tiny_reranker):
    folder = tiny_reranker("encoder")
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((folder / "config.json").stat().st_mode) == 0o666 & ~mask


# ---------------------------------------------------------------------------------------------------- item 17


def test_only_rank_0_prints_a_user_error(monkeypatch):
    from pyserini_ssm.cli import run_main

    def bad(argv):
        raise UserError("--hits must be >= 1")

    monkeypatch.setenv("RANK", "3")
    status, text = _captured_stderr(lambda: run_main(bad, []))
    assert status == 2 and text == ""
    monkeypatch.setenv("RANK", "0")
    status, text = _captured_stderr(lambda: run_main(bad, []))
    assert status == 2 and text == "error: --hits must be >= 1\n"


# ------------------------------------------------------------------------------------------ item 9: BM25 ranges


@pytest.mark.parametrize("k1, b, message", [(-1.0, 0.4, "k1 must be a finite number >= 0"),
                                            (0.9, 2.0, "b must be between 0 and 1"),
                                            (0.9, -0.1, "b must be between 0 and 1")])
def test_bm25_parameters_out_of_range_fail_before_the_jvm(tmp_path, k1, b, message):
    from pyserini_ssm import search
    from pyserini_ssm.cli import run_main

    topics = tmp_path / "topics.tsv"
    topics.write_text("q0\thello\n")
    argv = ["--index", str(tmp_path / "no-index"), "--topics", str(topics), "--output", str(tmp_path / "run.txt"),
            "--k1", str(k1), "--b", str(b)]
    status, text = _captured_stderr(lambda: run_main(search.main, argv))
    assert status == 2 and message in _one_error_line(text)  # not "no index": checked first, no JVM needed


def test_training_bm25_parameters_are_checked_with_the_data_source(tmp_path):
    from pyserini_ssm.training.data import DataSource

    with pytest.raises(UserError, match="--bm25-b must be between 0 and 1"):
        DataSource(train_jsonl=str(tmp_path / "t.jsonl"), index=str(tmp_path), bm25_b=2.0).validate()


# ----------------------------------------------------------------- items 4, 12: corpus lines, gzip, duplicates


def _records(count: int, start: int = 0) -> list[bytes]:
    return [json.dumps({"id": f"d{i}", "contents": f"document number {i} about topic {i % 3}"}).encode() + b"\n"
            for i in range(start, start + count)]


def test_a_bad_json_line_names_its_line_and_byte_before_the_jvm(tmp_path):
    from pyserini_ssm.first_stage.lucene import build_index

    lines = _records(3)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b"".join(lines[:2]) + b'{"id": "bad", "contents": \n' + lines[2])
    offset = len(lines[0]) + len(lines[1])
    with pytest.raises(UserError, match=rf"corpus.jsonl:3 \(byte {offset}\): not valid JSON .*--skip-bad-lines"):
        build_index(corpus, tmp_path / "index")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]  # no staging folder left


def test_a_truncated_gzip_is_detected_by_its_intact_first_records_and_named(tmp_path):
    import gzip

    from pyserini_ssm.first_stage.corpus import check_corpus
    from pyserini_ssm.first_stage.lucene import JSON_COLLECTION, build_index, detect_collection

    whole = gzip.compress(b"".join(_records(2000)))
    corpus = tmp_path / "corpus.jsonl.gz"
    corpus.write_bytes(whole[: len(whole) // 2])
    assert detect_collection(corpus)[0] == JSON_COLLECTION  # was: "cannot tell the corpus format"
    with pytest.raises(UserError, match=r"corpus.jsonl.gz: the gzip data ends early after line \d+ \(byte \d+"):
        build_index(corpus, tmp_path / "index")
    staging = tmp_path / "staging"
    staging.mkdir()
    files, scan = check_corpus([corpus], JSON_COLLECTION, staging, skip_bad_lines=True)
    assert scan.truncated_files == [str(corpus)] and 0 < scan.kept < 2000
    kept = files[0].read_bytes().splitlines()
    assert len(kept) == scan.kept and all(json.loads(line)["id"] == f"d{i}" for i, line in enumerate(kept))


def test_skip_bad_lines_and_duplicate_docids_keep_the_valid_first_records(tmp_path):
    from pyserini_ssm.first_stage.corpus import check_corpus
    from pyserini_ssm.first_stage.lucene import JSON_COLLECTION

    records = _records(5)
    corpus = tmp_path / "corpus.jsonl"
    repeated = json.dumps({"id": "d1", "contents": "a later record of d1"}).encode() + b"\n"
    corpus.write_bytes(b"".join(records[:3]) + b"not json\n" + b'\xff{"id": "x"}\n' + repeated + b"".join(records[3:]))
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(UserError, match=r"corpus.jsonl:4 \(byte \d+\): not valid JSON"):
        check_corpus([corpus], JSON_COLLECTION, staging)
    files, scan = check_corpus([corpus], JSON_COLLECTION, staging, skip_bad_lines=True)
    assert (scan.kept, scan.bad_lines, scan.duplicates, scan.first_duplicate) == (5, 2, 1, "d1")
    assert files[0].read_bytes() == b"".join(records)  # the first d1 kept, bad lines dropped
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(b"".join(records))
    assert check_corpus([clean], JSON_COLLECTION, staging)[0] == [clean]  # a clean file is indexed as it is


def test_runs_and_candidates_keep_the_first_entry_of_a_repeated_docid(tmp_path, caplog):
    from pyserini_ssm.runs import Hit, read_run

    run = tmp_path / "dup.run"
    run.write_text("1 Q0 d 1 3.0 t\n1 Q0 e 2 2.0 t\n1 Q0 d 3 1.0 t\n")
    with caplog.at_level("WARNING"):
        assert read_run(run) == {"1": [Hit("d", 3.0), Hit("e", 2.0)]}
    assert "1 repeated (query, document) entry dropped" in caplog.text


@pytest.mark.java
def test_index_drops_duplicates_search_agrees_and_unknown_fields_are_named(tmp_path, capsys):
    """One JVM: `index --skip-bad-lines` over records repeated five times and a bad line (was: "indexed 25
    documents"), then `search` with an unknown field (was: an empty run, exit 0) and a normal one, whose run our own
    readers accept: one entry per docid."""
    from pyserini_ssm import index, search
    from pyserini_ssm.cli import run_main
    from pyserini_ssm.runs import read_run

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b"".join(_records(5)) * 5 + b"{broken\n")
    assert run_main(index.main, ["--input", str(corpus), "--index", str(tmp_path / "idx"), "--skip-bad-lines",
                                 "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "indexed 5 documents" in printed and "duplicate docids dropped 20" in printed
    assert "bad lines dropped 1" in printed
    topics = tmp_path / "topics.tsv"
    topics.write_text("q0\tdocument topic\n")
    run = tmp_path / "run.txt"
    argv = ["--index", str(tmp_path / "idx"), "--topics", str(topics), "--output", str(run), "--threads", "1"]
    status = run_main(search.main, argv + ["--fields", "nosuchfield=1.0"])
    line = _one_error_line(capsys.readouterr().err)
    assert status == 2 and "no field 'nosuchfield'" in line and "contents" in line and not run.exists()
    assert run_main(search.main, argv) == 0
    hits = read_run(run)["q0"]
    assert sorted(hit.docid for hit in hits) == [f"d{i}" for i in range(5)]
