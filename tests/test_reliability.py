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
    """All seven writers: exit 2, one line naming the folder, before any model, data or JVM."""
    from pyserini_ssm import fuse, index, init, leaderboard, rerank, search, train
    from pyserini_ssm.cli import run_main

    run = _write_run(tmp_path / "a.txt")
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q0 0 d0 1\nq1 0 d1 1\n")
    topics = tmp_path / "topics.tsv"
    topics.write_text("q0\thello\n")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "d0", "contents": "hello"}\n')
    candidates = tmp_path / "candidates.json"
    candidates.write_text(json.dumps([{"query": "hello", "qid": "q0", "hits": [
        {"docid": "d0", "qid": "q0", "score": 1.0, "content": "hello world", "rank": 1}]}]))
    commands = [
        (fuse.main, ["--runs", str(run), str(run), "--output", str(read_only_folder / "fused.txt")]),
        (search.main, ["--index", str(tmp_path), "--topics", str(topics), "--output", str(read_only_folder / "r")]),
        (leaderboard.main, [str(run), "--qrels", str(qrels), "--output", str(read_only_folder / "board.md")]),
        (index.main, ["--input", str(corpus), "--index", str(read_only_folder / "idx")]),
        (init.main, ["--model", "bert-base", "--scale", "tiny", "--output", str(read_only_folder / "m")]),
        (train.main, ["--train-jsonl", str(corpus), "--model", "bert-base", "--output", str(read_only_folder / "t")]),
        (rerank.main, ["--candidates", str(candidates), "--model", "bert-base", "--output",
                       str(read_only_folder / "reranked.txt")]),
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


# ----------------------------------------------------------------------------------- item 10: damaged checkpoints


def _copy_of(folder: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    return copy


def test_a_truncated_model_safetensors_is_named(tiny_reranker, tmp_path):
    from pyserini_ssm.models.checkpoints import load_checkpoint

    model = _copy_of(tiny_reranker("encoder"), tmp_path)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match=r"model.safetensors is truncated: \d+ bytes, its header needs \d+"):
        load_checkpoint(model)
    weights.write_bytes(b"\x05")
    with pytest.raises(UserError, match="model.safetensors is not a valid safetensors file"):
        load_checkpoint(model)


def test_a_corrupt_config_json_is_named_not_the_tokenizer(tiny_reranker, tmp_path):
    from pyserini_ssm.models.checkpoints import load_checkpoint

    model = _copy_of(tiny_reranker("encoder"), tmp_path)
    (model / "config.json").write_text('{"model_type": "bert", ')
    with pytest.raises(UserError, match=r"config.json is not valid JSON") as error:
        load_checkpoint(model)
    assert "tokenizer" not in str(error.value)


# ---------------------------------------------------------------------------- item 11: binary training files


def test_a_binary_or_non_utf8_training_file_is_one_line(tmp_path):
    from pyserini_ssm.training.data import read_training_jsonl

    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"query": "caf\xe9", "positives": ["x"]}\n')
    with pytest.raises(UserError, match=r"latin.jsonl:1: not valid UTF-8"):
        read_training_jsonl(latin)
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match=r"weights.bin:\d+: not valid UTF-8|weights.bin:1: not valid JSON"):
        read_training_jsonl(binary)


# ------------------------------------------------------------------------- item 14, 16: training on disk, SIGTERM


def _train_config(model, output, **overrides):
    from pyserini_ssm.training.loop import TrainConfig

    values = dict(model=str(model), output=str(output), group_size=2, batch_size=2, lr=1e-3, max_steps=2,
                  max_length=32, progress=False)
    return TrainConfig(**(values | overrides))


def _examples():
    from pyserini_ssm.training.data import TrainingExample

    return [TrainingExample(f"query {i}", [f"relevant text {i}"], [f"other text {i}", f"more text {i}"], str(i))
            for i in range(4)]


def test_training_leaves_no_optimizer_state_in_the_model_and_no_stale_temporaries(tiny_reranker, tmp_path):
    from pyserini_ssm.training.loop import FINAL_SUMMARY, train

    model = tiny_reranker("encoder")
    output = tmp_path / "run"
    first = train(_train_config(model, output, max_steps=2, stop_after_steps=1), _examples())
    assert first.steps == 1 and (output / "checkpoint-1" / "trainer_state.pt").is_file()
    stale = output / f".checkpoint-2.tmp-{os.getpid() + 1}"  # what a kill -9 during a checkpoint write leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    second = train(_train_config(model, output, max_steps=2, resume=True), _examples())
    assert second.steps == 2 and not stale.exists()
    assert not (output / "model" / "trainer_state.pt").exists()  # the optimizer state stays in checkpoints
    summary = json.loads((output / "model" / FINAL_SUMMARY).read_text())
    assert summary["step"] == 2 and "optimizer" not in summary
    again = train(_train_config(model, output, max_steps=2, resume=True), _examples())  # a finished run
    assert again.steps == 2 and again.losses == []
    with pytest.raises(UserError, match="keeps no optimizer state"):
        train(_train_config(model, output, max_steps=4, resume=True), _examples())


def test_a_failed_training_start_leaves_no_output_folder(tmp_path):
    from pyserini_ssm.training.loop import train

    output = tmp_path / "never"
    with pytest.raises(UserError):
        train(_train_config("no-such-model-anywhere", output), _examples())
    assert not output.exists()


@pytest.mark.slow  # a training subprocess: ~20 s on 2 busy cores
def test_sigterm_during_training_checkpoints_at_a_step_and_exits_143(tiny_reranker, tmp_path):
    """A real SIGTERM to a real `python -m pyserini_ssm.train`: it finishes the step, writes checkpoint-N and exits
    143 with one line; --resume then completes the run."""
    import signal
    import time

    from pyserini_ssm.training.data import write_training_jsonl

    data = tmp_path / "train.jsonl"
    write_training_jsonl(_examples() * 50, data)
    output = tmp_path / "run"
    argv = [sys.executable, "-m", "pyserini_ssm.train", "--train-jsonl", str(data), "--model",
            str(tiny_reranker("encoder")), "--output", str(output), "--group-size", "2", "--batch-size", "1",
            "--max-steps", "100000", "--max-length", "32", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    log = output / "train_log.jsonl"
    deadline = time.monotonic() + 240
    while not (log.is_file() and log.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 143, stderr[-3000:]
    assert "terminated by SIGTERM" in stderr and "Traceback" not in stderr
    checkpoints = [p for p in output.iterdir() if p.name.startswith("checkpoint-")]
    assert len(checkpoints) == 1 and (checkpoints[0] / "trainer_state.pt").is_file()
    assert not [p for p in output.iterdir() if ".tmp-" in p.name]


def test_the_jvm_is_started_without_its_own_signal_handlers_and_crash_files_go_to_tmp():
    """-Xrs: a SIGTERM reaches Python's handler, not the JVM's shutdown (which crashed libtorch once); checked on
    the options, without starting a JVM."""
    done = _run_cli("""
        import jnius_config
        from pyserini_ssm.java import ensure_java
        ensure_java()
        print(jnius_config.options)
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "-Xrs" in done.stdout and "-XX:ErrorFile=" in done.stdout and "hs_err_pid%p.log" in done.stdout
    assert "hs_err_pid*.log" in (REPO_ROOT / ".gitignore").read_text()


# ---------------------------------------------------------------------------------------- item 18: test ports


def test_no_test_hard_codes_a_master_port():
    import re

    for path in (REPO_ROOT / "tests").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"--master[-_]port[\"']?,\s*[\"']\d+", text), path
        assert not re.search(r"MASTER_PORT[\"']?\]?\s*[:=]\s*[\"']\d+", text), path


# ------------------------------------------------------------------------ item 19: int32 indexing in the kernels


def _mamba2_780m_config():
    from pyserini_ssm.models import mamba as M

    return M.hf_config_from_state_spaces({
        "d_model": 1536, "d_intermediate": 0, "n_layer": 1, "vocab_size": 100,
        "ssm_cfg": {"layer": "Mamba2", "d_state": 128, "headdim": 64, "ngroups": 1}, "attn_layer_idx": [],
        "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "pad_vocab_size_multiple": 16, "tie_embeddings": True})


def test_widest_activation_per_family():
    from types import SimpleNamespace

    from pyserini_ssm.models.scoring import widest_activation

    assert widest_activation(_mamba2_780m_config()) == 2 * 3072 + 2 * 1 * 128 + 48 == 6448  # the crash's in_proj
    assert widest_activation(SimpleNamespace(model_type="mamba", hidden_size=768, intermediate_size=1536)) == 3072
    assert widest_activation(SimpleNamespace(model_type="bert", hidden_size=384, intermediate_size=1536)) == 1536
    assert widest_activation(SimpleNamespace(model_type="opt", hidden_size=1024, word_embed_proj_dim=512,
                                             ffn_dim=4096)) == 4096
    assert widest_activation(SimpleNamespace(model_type="gpt2", n_embd=768, n_inner=None)) == 3072


def test_the_batch_planner_keeps_every_forward_under_2_to_the_31_elements():
    """The crash: 128 padded pairs x 4,096 tokens x 6,448 in_proj outputs = 3.4e9 elements. Planned with the
    model's width, every padded batch (rows x longest) and every packed row stays under 2^31, and nothing is lost."""
    import random

    from pyserini_ssm.ops.batching import INT32_ELEMENTS, int32_token_cap, length_sorted_batches, pack_sequences

    width = 6448
    lengths = [4096] * 128
    assert len(length_sorted_batches(lengths, 128)) == 1  # the old plan: one forward of 3.4e9 elements
    batches = length_sorted_batches(lengths, 128, activation_width=width)
    assert [len(batch) for batch in batches] == [81, 47]  # 81 x 4096 x 6448 = 2.139e9 < 2^31 <= 82 x ...
    assert 81 * 4096 * width < INT32_ELEMENTS <= 82 * 4096 * width
    rng = random.Random(0)
    mixed = [rng.randint(1, 8192) for _ in range(2000)]
    for max_tokens in (None, 10**9):
        planned = length_sorted_batches(mixed, 512, max_tokens, activation_width=width)
        assert sorted(i for batch in planned for i in batch) == list(range(len(mixed)))
        assert all(len(batch) * max(mixed[i] for i in batch) * width < INT32_ELEMENTS for batch in planned)
    rows = pack_sequences(mixed, 10**7, activation_width=width)
    assert sorted(i for row in rows for i in row) == list(range(len(mixed)))
    assert all(sum(mixed[i] for i in row) * width < INT32_ELEMENTS for row in rows)
    assert max(sum(mixed[i] for i in row) for row in rows) <= int32_token_cap(width)
    with pytest.raises(ValueError, match="past 2\\^31"):
        length_sorted_batches([int32_token_cap(width) + 1], 1, activation_width=width)


def test_the_reranker_plans_its_forwards_with_the_models_width(tiny_reranker, monkeypatch):
    """score_encoded passes the model's width to the planner: with a width that allows 100 tokens a forward, every
    forward the model sees is at most 100 tokens (rows x padded length), and the scores equal an uncapped run's."""
    import numpy as np

    from pyserini_ssm.models import reranker as reranker_module
    from pyserini_ssm.models.reranker import Reranker

    model = Reranker.from_pretrained(str(tiny_reranker("encoder")), device="cpu")
    pairs = [("query", "word " * (3 + 2 * i)) for i in range(12)]
    uncapped = model.predict(pairs, batch_size=12)
    shapes = []
    original = model.model.forward
    monkeypatch.setattr(model.model, "forward", lambda batch: shapes.append(tuple(batch["input_ids"].shape))
                        or original(batch))
    monkeypatch.setattr(reranker_module, "widest_activation", lambda config: (2**31 - 1) // 100)
    capped = model.predict(pairs, batch_size=12)
    assert len(shapes) > 1 and all(rows * length <= 100 for rows, length in shapes)
    np.testing.assert_allclose(capped, uncapped, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_mamba2_780m_width_at_4096_tokens_x_128_pairs_runs_under_the_cap():
    """On CUDA with mamba_ssm: the shape that killed the CUDA context (mamba2-780m widths, 128 pairs x 4,096
    tokens) planned with the cap runs, every score finite and equal to the same pair scored alone."""
    import torch

    from pyserini_ssm.models import mamba as M
    from pyserini_ssm.models.scoring import widest_activation
    from pyserini_ssm.ops.batching import length_sorted_batches

    if not M.mamba_ssm_available():
        pytest.skip("mamba_ssm / causal_conv1d not importable")
    import transformers

    config = _mamba2_780m_config()
    torch.manual_seed(0)
    backbone = M.build_mamba_backbone(transformers.Mamba2ForCausalLM(config).eval(), "cuda").to(torch.bfloat16)
    input_ids = torch.randint(0, 100, (128, 4096), generator=torch.Generator().manual_seed(1))
    batches = length_sorted_batches([4096] * 128, 128, activation_width=widest_activation(config))
    assert max(len(batch) for batch in batches) == 81
    with torch.no_grad():
        last = torch.cat([backbone(input_ids[batch].cuda())[:, -1].float() for batch in batches])
        alone = backbone(input_ids[batches[0][:1]].cuda())[:, -1].float()
    torch.cuda.synchronize()
    assert torch.isfinite(last).all()
    torch.testing.assert_close(last[:1], alone, rtol=5e-2, atol=5e-2)


def test_a_full_disk_while_reranking_is_one_line_and_the_progress_resumes(full_folder):
    """The rerank progress file filling a real 64 KiB tmpfs: one line naming it; the torn last line is dropped when
    the same file is opened again (the audit's rerun after freeing space was byte-identical)."""
    from pyserini_ssm.reranking import PartialRun

    path = full_folder / "run.txt.partial"
    partial = PartialRun.open(path, {"model": "m"})
    text = "q Q0 d 1 1.000000 t\n" * 200
    with pytest.raises(UserError, match=r"cannot write .*run.txt.partial: no space left on the device"):
        for group in range(100):
            partial.commit(group, ["q"], text)
    partial.close()
    committed = partial.done
    reopened = PartialRun.open(path, {"model": "m"})
    assert sorted(reopened.done) == sorted(committed)[: len(reopened.done)] and len(reopened.done) >= 1
    reopened.close()


def test_a_training_micro_batch_past_the_int32_cap_is_refused_before_the_forward(tiny_reranker, monkeypatch):
    from pyserini_ssm.models import reranker as reranker_module
    from pyserini_ssm.models.reranker import Reranker
    from pyserini_ssm.training.data import TrainingGroup
    from pyserini_ssm.training.loop import PairBatcher

    monkeypatch.setattr(reranker_module, "widest_activation", lambda config: (2**31 - 1) // 40)  # 40 tokens
    reranker = Reranker.from_pretrained(str(tiny_reranker("encoder")), device="cpu")
    batcher = PairBatcher(reranker, _train_config("unused", "unused"), reranker.device)
    assert batcher([TrainingGroup("q", ("short",))])["input_ids"].numel() <= 40
    with pytest.raises(UserError, match="lower --batch-size and raise --grad-accum"):
        batcher([TrainingGroup("a longer query", tuple("a document of several words" for _ in range(8)))])


def test_sigterm_raises_outside_a_safe_region_and_waits_inside_one():
    import signal

    from pyserini_ssm import stopping

    with stopping.graceful_sigterm():
        with stopping.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(1000))  # the handler runs between bytecodes
            assert stopping.requested()  # recorded, not raised: the step goes on
    with pytest.raises(stopping.Terminated):
        with stopping.graceful_sigterm():
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(1000))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the previous handler is back


@pytest.mark.java
@pytest.mark.slow  # a JVM and torch in one subprocess: ~25 s on 2 busy cores
def test_sigterm_with_the_jvm_loaded_stops_at_a_safe_point(tmp_path):
    """The crash of item 16 (SIGSEGV in libtorch after the JVM's own SIGTERM shutdown): with the JVM started (as
    `train --index` starts it to mine) and torch computing in deferred steps, a SIGTERM ends at a step boundary
    with exit 143, one line, and no hs_err_pid*.log in the working folder."""
    import signal
    import time

    script = textwrap.dedent("""
        import sys, torch
        from pyserini_ssm import stopping
        from pyserini_ssm.cli import run_main
        def main(argv):
            from pyserini_ssm.first_stage.lucene import _java_classes
            _java_classes()("java.util.ArrayList")()
            x = torch.randn(128, 128)
            print("ready", flush=True)
            while True:
                with stopping.deferred():
                    for _ in range(20):
                        x = torch.tanh(x @ x)
                if stopping.requested():
                    print("stopped at a step boundary", flush=True)
                    raise stopping.Terminated()
        sys.exit(run_main(main))
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    process = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    time.sleep(1)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    assert "stopped at a step boundary" in stdout and "terminated by SIGTERM" in stderr
    assert not list(tmp_path.glob("hs_err_pid*.log"))
