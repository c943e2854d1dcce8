"""Issue 13's bad inputs, kills and full disks, each through the CLI: exit code 2, one line
`error: ...` naming the file or key, no traceback, and the user's files unchanged byte for
byte. (Cases with a unit test elsewhere are named there: test_tasks.py for task files,
test_train.py for damaged checkpoints, test_report.py for hostile text in the report.)"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_configs, write_quote_task
from sparsecircuits.cli import main
from sparsecircuits.corpus import ORPHAN_AGE_S, prepare
from sparsecircuits.errors import UserError
from sparsecircuits.report import build_report, serve
from sparsecircuits.study import StudyConfig
from sparsecircuits.study import run as study_run
from sparsecircuits.tasks import get_task
from sparsecircuits.tasks.compound import COMPOUND_TASKS, get_compound_task
from sparsecircuits.tokenizer import save_tokenizer, train_tokenizer
from sparsecircuits.train import train
from study_fixture import tiny_study_config, write_fake_study
from test_report import Server

TASK = "enumerate_range"  # a built-in task with prompts of 21 to 72 tokens here
TINY = ["--preset", "smoke", "--set", "vocab_size=300", "n_ctx=16", "d_model=32", "steps=2"]
TINY += ["batch_size=4", "eval_every=2", "eval_batches=1", "checkpoint_every=2"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (links not followed), by path relative to it."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def fails(capsys, argv: list[str], *words: str) -> str:
    """Run the CLI in-process: exit code 2, one `error:` line holding every word, nothing
    else but notes. A traceback would be an exception out of main() and fail the test."""
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == 2, captured.err
    assert len(errors) == 1 and all(
        line.startswith("note: ") for line in lines if line not in errors
    ), lines
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus_dir) -> Path:
    """A tiny trained checkpoint (not to be modified: copy it first)."""
    # n_ctx 48: some generated prompts of TASK fit, some do not
    m, t = tiny_configs(corpus_dir, n_ctx=48, steps=4, checkpoint_every=2, eval_every=2)
    return train(m, t, tmp_path_factory.mktemp("run") / "r", progress=False)


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def set_weights(run: Path, fn) -> None:
    path = run / "model.safetensors"
    save_file({k: fn(v) for k, v in load_file(str(path)).items()}, str(path))


# ---------- 1: run folders ----------


def test_train_refuses_a_folder_that_is_not_a_run(tmp_path, corpus_dir, capsys):
    u = tmp_path / "u"
    u.mkdir()
    (u / "metrics.jsonl").write_text("notes\n")
    before = snapshot(u)
    fails(capsys, ["train", *TINY, "--data", str(corpus_dir), "--out", str(u)], str(u), "not a run")
    assert snapshot(u) == before


def test_out_naming_a_file(tmp_path, corpus_dir, run, capsys):
    f = tmp_path / "f.txt"
    f.write_text("mine")
    fails(capsys, ["train", *TINY, "--data", str(corpus_dir), "--out", str(f)], str(f), "is a file")
    fails(capsys, ["prune", str(run), "--task", TASK, "--out", str(f)], str(f))
    assert f.read_text() == "mine"


def test_study_refuses_a_different_study_and_force_clears_its_sections(tmp_path, capsys):
    out = write_fake_study(tmp_path / "s")
    (out / "study.json").write_text(json.dumps({"preset": "other"}))
    before = snapshot(out)
    fails(capsys, ["study", "--preset", "quick", "--out", str(out)], "holds a different study")
    fails(capsys, ["study", "--preset", "quick", "--resume", "--out", str(out)], "--force")
    assert snapshot(out) == before
    # --force: the old study's results and every analysis section go (issue item 8)
    (out / "notes").mkdir()
    (out / "notes" / "mine.txt").write_text("kept")
    study_run._claim(out, StudyConfig(), resume=False, force=True)
    left = sorted(p.name for p in out.iterdir())
    assert left == ["notes", "study.json"]


def test_a_failed_start_leaves_no_folder_that_blocks_the_retry(tmp_path, corpus_dir, capsys):
    out = tmp_path / "r"
    fails(capsys, ["train", *TINY, "--set", "eval_every=0", "--out", str(out)], "eval_every")
    assert not out.exists()


# ---------- 2: a study's cached circuits follow the task file's content ----------


def test_study_resume_reprunes_after_the_task_file_changes(tmp_path, corpus_dir, monkeypatch):
    task = Path(write_quote_task(tmp_path / "quotes.jsonl"))
    cfg = tiny_study_config(
        corpus_dir,
        task,
        steps=2,
        every=2,
        densities=[0.5],
        fixed_l0_density=0.5,
        l0_widths=[32],
        k_coefs=[1e-2],
        controls=False,
        prune=dict(
            steps=2,
            n_train=4,
            n_test=4,
            random_draws=1,
            effect_pairs=1,
            example_pairs=1,
            refuse_trivial=False,
        ),
    )
    out = tmp_path / "study"
    study_run.run_study(cfg, out, progress=False)
    calls = []
    real = study_run.find_circuit
    monkeypatch.setattr(study_run, "find_circuit", lambda *a, **k: calls.append(1) or real(*a, **k))
    study_run.run_study(cfg, out, resume=True, progress=False)
    assert calls == []  # unchanged: every circuit reused
    rows = [json.loads(line) for line in task.read_text().splitlines()]
    for r in rows:  # every answer swapped: the same path, another task
        r["correct"], r["incorrect"] = r["incorrect"], r["correct"]
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    study_run.run_study(cfg, out, resume=True, progress=False)
    assert len(calls) == 2  # both models' circuits searched again


# ---------- 3: a torn metrics line ----------


def test_resume_after_a_torn_metrics_line(tmp_path, run, capsys):
    r = copy_run(run, tmp_path / "r")
    with (r / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "lo')
    assert main(["train", "--resume", "--out", str(r), "--quiet"]) == 0
    rows = [json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]


# ---------- 4: a full disk ----------


@pytest.fixture()
def disk(tmp_path):
    """A 16 MB tmpfs (root only; a test fills it with `fill`)."""
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a tmpfs mount, which needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("mount -t tmpfs failed (no permission in this container)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(mnt: Path, leave_kb: int = 0) -> None:
    st = os.statvfs(mnt)
    with contextlib.suppress(OSError), (mnt / "filler").open("wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave_kb * 1024))


def no_temporaries(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith((".tmp", ".old"))]


def test_full_disk_train(disk, corpus_dir, capsys):
    fill(disk, leave_kb=200)  # room for the small files, not for the weights
    out = disk / "run"
    err = fails(capsys, ["train", *TINY, "--data", str(corpus_dir), "--out", str(out), "--quiet"])
    assert "cannot write (" in err and "No space left on device" in err and str(out) in err
    assert no_temporaries(disk)


def test_full_disk_prune(disk, run, capsys):
    (disk / "c").mkdir()
    (disk / "c" / "circuit.json").write_text("old")
    fill(disk)
    args = ["prune", str(run), "--task", TASK, "--steps", "2", "--quiet"]
    args += [
        "--n-train",
        "4",
        "--n-test",
        "4",
        "--out",
        str(disk / "c"),
        "--target-loss",
        "10",
        "--allow-trivial",
        "--force",
    ]
    fails(capsys, args, str(disk / "c" / "circuit.json"), "No space left")
    assert (disk / "c" / "circuit.json").read_text() == "old" and no_temporaries(disk)


def test_full_disk_study_and_view(disk, capsys):
    study = write_fake_study(disk / "s")
    build_report(study)
    fill(disk)
    before = snapshot(study)
    new = disk / "new"
    fails(capsys, ["study", "--out", str(new)], str(new / "study.json"), "No space left")
    # --port 99999: were the report written, the command would end there, not serve
    fails(capsys, ["view", str(study), "--port", "99999"], "report.html", "No space left")
    assert snapshot(study) == before and no_temporaries(disk)


# ---------- 5: config values ----------


@pytest.mark.parametrize(
    "setting, key",
    [
        ("steps=1.5", "steps"),
        ("n_layer=1.5", "n_layer"),
        ('n_layer="2"', "n_layer"),
        ("eval_every=0", "eval_every"),
        ("d_head=0", "d_head"),
        ("lr=NaN", "lr"),
        ("lr=-1", "lr"),
        ("beta2=2", "beta2"),
        ("data=5", "data"),
        ("density=abc", "density"),
        ("n_ctx=100000", "n_ctx"),
    ],
)
def test_bad_config_values_name_their_key(tmp_path, corpus_dir, capsys, setting, key):
    out = tmp_path / "r"
    fails(capsys, ["train", *TINY, "--set", setting, "--out", str(out)], key)
    assert not out.exists()


def test_config_naming_a_folder_or_nothing(tmp_path, capsys):
    fails(
        capsys,
        ["train", "--config", str(tmp_path), "--out", str(tmp_path / "r")],
        str(tmp_path),
        "folder",
    )
    missing = tmp_path / "none.json"
    fails(capsys, ["train", "--config", str(missing), "--out", str(tmp_path / "r")], str(missing))


def test_config_without_preset_says_where_the_rest_comes_from(tmp_path, corpus_dir, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"train": {"steps": 2, "data": [str(corpus_dir)]}}))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "note: --config without --preset" in err and "quick preset" in err
    # the quick preset's vocabulary is more than this corpus has: "distinct tokens"
    assert "distinct tokens" in err and "vocab_size" in err


# ---------- 6 and 10: checkpoints that do not match, NaN and zero weights ----------


def test_config_claiming_a_huge_model_is_refused_before_allocating(tmp_path, run, capsys):
    r = copy_run(run, tmp_path / "r")
    cfg = json.loads((r / "config.json").read_text())
    cfg["model"]["d_model"] = 16384
    (r / "config.json").write_text(json.dumps(cfg))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fails(capsys, ["eval", str(r), "--device", "cpu"], "model.safetensors", "config.json implies")
    # the model this config describes would take gigabytes
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000


def test_nan_weights_are_refused_on_load(tmp_path, run, capsys):
    r = copy_run(run, tmp_path / "r")
    set_weights(r, lambda v: v * float("nan") if v.is_floating_point() else v)
    before = snapshot(r)
    fails(capsys, ["sample", str(r), "--device", "cpu"], "model.safetensors", "NaN")
    fails(
        capsys,
        ["prune", str(r), "--task", TASK, "--out", str(tmp_path / "c")],
        "NaN",
    )
    assert not (tmp_path / "c" / "circuit.json").exists()
    assert snapshot(r) == before


@pytest.fixture(scope="module")
def zero_model(tmp_path_factory) -> Path:
    """A checkpoint whose weights are all zero, with a tokenizer that encodes the compound
    tasks' answers as single tokens (trained on text full of them)."""
    root = tmp_path_factory.mktemp("compound")
    rng = random.Random(0)
    lines = []
    for name in COMPOUND_TASKS:
        lines += [e.prompt + e.answer for e in get_compound_task(name, 40, 1, seed=0).train]
    for f in range(4):
        rng.shuffle(lines)
        (root / f"m{f}.py").write_text("\n".join(lines) + "\n")
    m, t = tiny_configs(root, vocab_size=400, n_ctx=48, steps=2)
    run = train(m, t, tmp_path_factory.mktemp("zero") / "run", progress=False)
    set_weights(run, torch.zeros_like)
    return run


def test_all_zero_weights_do_not_crash_activations(tmp_path, zero_model, capsys):
    out = tmp_path / "a"
    args = ["activations", str(zero_model), "--out", str(out), "-n", "4", "--pairs", "4"]
    assert main([*args, "--no-training"]) == 0, capsys.readouterr().err
    assert (out / "activations.png").stat().st_size > 0 and (out / "section.json").is_file()


def test_all_zero_weights_do_not_crash_modularity(tmp_path, zero_model, capsys):
    out = tmp_path / "m"
    args = ["modularity", str(zero_model), "--out", str(out), "--tasks", "quote_bracket"]
    args += ["--regimes", "pretrained", "--finetune-seeds", "1", "--mask-seeds", "1"]
    args += ["--finetune-steps", "2", "--mask-steps", "2", "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    assert (out / "modularity.json").is_file() and (out / "ablation_matrix.png").is_file()


# ---------- 7: a large binary among the data ----------


def test_data_folder_with_a_large_binary_reads_only_its_head(tmp_path, corpus_dir, capsys):
    data = tmp_path / "data"
    shutil.copytree(corpus_dir, data)
    with (data / "video.mp4").open("wb") as f:
        f.truncate(400 * 2**20)  # sparse: 400 MB of zeros that take no disk
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    args = ["train", *TINY, "--data", str(data), "--out", str(tmp_path / "r"), "--quiet"]
    assert main(args) == 0
    assert "skipped 1 files that are not UTF-8 text" in capsys.readouterr().err
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


# ---------- 9: the report and the view server ----------


def test_section_images_stay_in_their_folder(tmp_path, capsys):
    study = write_fake_study(tmp_path / "s")
    (tmp_path / "x").write_bytes(b"OUTSIDE")
    sec = study / "activations" / "section.json"
    for name in ("/etc/passwd", "../../x", "../results.json"):
        sec.write_text(json.dumps({"title": "t", "images": [{"caption": "c", "file": name}]}))
        html = build_report(study).read_text()
        assert "not a file in the section's folder" in html and name in html
        assert "T1VUU0lERQ" not in html and "cm9vd" not in html  # base64 of OUTSIDE, root


def test_a_results_row_edited_to_garbage_is_one_line(tmp_path, capsys):
    study = write_fake_study(tmp_path / "s")
    data = json.loads((study / "results.json").read_text())
    data["circuits"][0]["metrics"] = "garbage"
    (study / "results.json").write_text(json.dumps(data))
    before = snapshot(study)
    fails(capsys, ["study", "--out", str(study), "--summary"], "circuits[0]", "'metrics'")
    assert snapshot(study) == before


def test_report_paths_are_relative_to_the_study(tmp_path):
    study = write_fake_study(tmp_path / "s")
    results = json.loads((study / "results.json").read_text())
    results["models"][0]["dir"] = str(tmp_path / "cache" / "models" / "abc")
    (study / "results.json").write_text(json.dumps(results))
    (study / "circuits" / "w64_dense_s0" / "single_double_quote" / "circuit.json").write_text("{")
    html = build_report(study.absolute()).read_text()
    assert str(tmp_path) not in html
    assert "../cache/models/abc" in html and "circuits/w64_dense_s0" in html


def fetch(url: str, host: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_view_serves_only_the_study_to_local_hosts(tmp_path):
    study = write_fake_study(tmp_path / "s")
    (tmp_path / "secret.txt").write_text("secret")
    (study / "link.txt").symlink_to(tmp_path / "secret.txt")
    (study / "linkdir").symlink_to(tmp_path)
    (study / "inside.txt").symlink_to(study / "results.json")
    with Server(study) as base:
        assert fetch(base + "report.html")[0] == 200
        assert fetch(base + "inside.txt")[0] == 200  # a link within the study is fine
        port = base.rsplit(":", 1)[1].strip("/")
        assert fetch(base + "report.html", f"localhost:{port}")[0] == 200
        for path in ("link.txt", "linkdir/secret.txt", "circuits/", "../secret.txt"):
            assert fetch(base + path)[0] == 404, path
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
            assert fetch(base + "report.html", host)[0] == 421, host
        status, _ = fetch(base)
        assert status == 200  # / redirects to the report


def test_view_port_out_of_range(tmp_path, capsys):
    study = write_fake_study(tmp_path / "s")
    fails(capsys, ["view", str(study), "--port", "99999", "--no-build"], "--port 99999")
    with pytest.raises(UserError, match="0 to 65535"):
        serve(study, -1)


# ---------- 11 and 12: smaller ones ----------


def test_task_naming_a_folder(tmp_path, run, capsys):
    fails(
        capsys,
        ["prune", str(run), "--task", str(tmp_path) + "/x.jsonl", "--out", str(tmp_path / "c")],
        "x.jsonl",
    )
    (tmp_path / "d.jsonl").mkdir()
    fails(
        capsys,
        ["prune", str(run), "--task", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "c")],
        "d.jsonl",
    )


@pytest.mark.parametrize(
    "argv, words",
    [
        (["eval", "{run}", "--batches", "0"], "--batches"),
        (["eval", "{run}", "--device", "tpu"], "--device 'tpu'"),
        (["sample", "{run}", "--device", "cuda:x"], "--device"),
        (["activations", "{run}", "--out", "{run}-act", "--device", "tpu"], "--device 'tpu'"),
    ],
)
def test_bad_options(run, capsys, argv, words):
    fails(capsys, [a.format(run=run) for a in argv], words)


@pytest.mark.parametrize("flag", ["--n-train", "--n-test", "--n-select"])
def test_prune_pairs_past_the_bound_are_refused_before_any_work(run, tmp_path, capsys, flag):
    """prune --n-train 100000 grew to 3.9 GB in 2 minutes: a split is bounded, by name."""
    argv = ["prune", str(run), "--task", TASK, flag, "100000", "--out", str(tmp_path / "c")]
    fails(capsys, argv, flag, "16384")
    assert not (tmp_path / "c" / "circuit.json").exists()


@pytest.mark.parametrize("command", [["study"], ["modularity", "{run}"]])
def test_a_bad_device_leaves_no_folder(run, tmp_path, capsys, command):
    out = tmp_path / "s"
    argv = [a.format(run=run) for a in command] + ["--out", str(out), "--device", "tpu"]
    fails(capsys, argv, "--device 'tpu'")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize(
    "command", [["eval", "{run}"], ["modularity", "{run}", "--out", "{run}-m"]]
)
def test_cuda_without_cuda(run, capsys, command):
    argv = [a.format(run=run) for a in command] + ["--device", "cuda"]
    fails(capsys, argv, "CUDA is not available")


def test_result_files_are_readable_like_any_other(run):
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "metrics.jsonl"):
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_killed_tokenization_leaves_no_orphan_temporaries(tmp_path, corpus_dir):
    tok_dir = prepare([str(corpus_dir)], 300, cache=tmp_path).cache_dir
    (tok_dir / "meta.json").unlink()  # as if killed before the tokens were complete
    old, live = tok_dir / ".train.bin.killed.tmp", tok_dir / ".train.bin.live.tmp"
    old.write_bytes(b"x")
    live.write_bytes(b"x")  # another process still writing it
    stale = old.stat().st_mtime - ORPHAN_AGE_S - 60
    os.utime(old, (stale, stale))
    prepare([str(corpus_dir)], 300, cache=tmp_path)
    assert not old.exists() and live.exists() and (tok_dir / "meta.json").is_file()


def test_task_file_with_a_bom_unpaired_rows_and_errors_in_file_order(tmp_path, capsys):
    rows = [{"prompt": "x = 'a", "correct": "'", "incorrect": '"'}] * 2
    rows += [{"prompt": f'y{i} = "b', "correct": '"', "incorrect": "'"} for i in range(6)]
    good = tmp_path / "good.jsonl"
    good.write_text("\ufeff" + "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["tasks", "show", str(good), "-n", "3"]) == 0
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps(r) for r in rows[:2]] + ['{"prompt": "z"}', json.dumps(rows[3]), "{oops"]
    bad.write_text("\n".join(lines) + "\n")
    fails(capsys, ["tasks", "show", str(bad)], f"{bad}:3")


def test_unpaired_rows_stay_unpaired_in_the_nonsense_control(tmp_path):
    rows = [{"prompt": f'y{i} = "b', "correct": '"', "incorrect": "'"} for i in range(8)]
    path = tmp_path / "u.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task(str(path), 4, 4, 0)
    nonsense = study_run.nonsense_task(task, 0)
    pairs = nonsense.train + nonsense.test
    assert len(pairs) == 8 and all(p.unpaired for p in pairs)
    assert any(p.answer_a == "'" for p in pairs)  # some answers swapped, flag kept


def test_prune_batch_pairs_below_one_is_refused(tmp_path, run, capsys):
    args = ["prune", str(run), "--task", TASK, "--batch-pairs", "0", "--out", str(tmp_path)]
    fails(capsys, args, "batch pairs must be at least 1, got 0")


def test_prune_batch_pairs_reach_the_mask_training(tmp_path, run, capsys):
    args = ["prune", str(run), "--task", TASK, "--steps", "2", "--batch-pairs", "3"]
    args += ["--n-train", "8", "--n-test", "8", "--out", str(tmp_path / "c"), "--quiet"]
    assert main([*args, "--target-loss", "10", "--allow-trivial"]) == 0
    saved = json.loads((tmp_path / "c" / "circuit.json").read_text())
    assert saved["prune_config"]["batch_pairs"] == 3


def test_builtin_task_on_a_short_context_keeps_the_prompts_that_fit(tmp_path, run, capsys):
    args = ["prune", str(run), "--task", TASK, "--steps", "2", "--n-train", "8"]
    args += [
        "--n-test",
        "8",
        "--out",
        str(tmp_path / "c"),
        "--quiet",
        "--target-loss",
        "10",
        "--allow-trivial",
    ]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "longer than n_ctx=48 and were left out" in err
    assert json.loads((tmp_path / "c" / "circuit.json").read_text())["task"] == TASK


# ---------- issue 35, 1: a tokenizer from another run ----------


def other_tokenizer(run: Path, vocab_size: int) -> None:
    """Replace the run's tokenizer.json by one trained on other text."""
    text = [f"x{i} = {i * 7} + y{i}\n" for i in range(400)]
    save_tokenizer(train_tokenizer(text, vocab_size), run / "tokenizer.json")


@pytest.mark.parametrize("vocab_size", [280, 300], ids=["smaller", "same-size"])
def test_a_tokenizer_from_another_run_is_refused(tmp_path, run, capsys, vocab_size):
    r = copy_run(run, tmp_path / "r")
    other_tokenizer(r, vocab_size)
    before = snapshot(r)
    tok = str(r / "tokenizer.json")
    fails(capsys, ["eval", str(r), "--device", "cpu"], tok, "not the tokenizer")
    fails(capsys, ["sample", str(r), "--device", "cpu"], tok, "not the tokenizer")
    fails(capsys, ["prune", str(r), "--task", TASK, "--out", str(tmp_path / "c")], tok)
    fails(capsys, ["explain", str(r), "--node", "blocks.0.attn.hook_q[0]"], tok)
    assert snapshot(r) == before and not (tmp_path / "c").exists()


def test_a_checkpoint_without_a_tokenizer_hash_is_checked_on_its_vocabulary(tmp_path, run, capsys):
    r = copy_run(run, tmp_path / "r")
    cfg = json.loads((r / "config.json").read_text())
    del cfg["tokenizer"]  # as written before the hash was recorded
    (r / "config.json").write_text(json.dumps(cfg))
    assert main(["eval", str(r), "--device", "cpu", "--batches", "1"]) == 0
    other_tokenizer(r, 280)
    fails(capsys, ["eval", str(r), "--device", "cpu"], "tokenizer.json", "280 tokens")


# ---------- issue 35, 2: a config.json missing a key, or from a newer version ----------


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda c: c["model"].pop("afrac"), ["config.json", "'afrac'"]),
        (lambda c: c["train"].pop("heldout_frac"), ["config.json", "'heldout_frac'"]),
        (lambda c: c.pop("version"), ["config.json", "'version'"]),
        (lambda c: c.update(version=2), ["config.json", "version 2"]),
    ],
    ids=["model-key", "train-key", "no-version", "newer-version"],
)
def test_an_incomplete_or_newer_config_is_refused(tmp_path, run, capsys, edit, words):
    r = copy_run(run, tmp_path / "r")
    cfg = json.loads((r / "config.json").read_text())
    edit(cfg)
    (r / "config.json").write_text(json.dumps(cfg))
    before = snapshot(r)
    fails(capsys, ["eval", str(r), "--device", "cpu"], *words)
    fails(capsys, ["train", "--resume", "--out", str(r), "--quiet"], *words)
    assert snapshot(r) == before


# ---------- issue 35, 3: explain and stale or foreign results ----------


def test_explain_follows_the_task_files_content(tmp_path, run, capsys):
    r = copy_run(run, tmp_path / "r")
    task = Path(write_quote_task(tmp_path / "t.jsonl"))
    args = ["explain", str(r), "--node", "blocks.0.mlp.hook_post[0]", "--task", str(task)]
    cache = r / "explanations.json"

    def explained() -> dict:  # the stored numbers, unrounded
        assert main(args) == 0
        return json.loads(cache.read_text())["nodes"]

    first = explained()
    rows = [json.loads(line) for line in task.read_text().splitlines()]
    for row in rows:  # the same path, other prompts
        row["prompt"] = "for value in items:\n    " + row["prompt"]
    task.write_text("".join(json.dumps(row) + "\n" for row in rows))
    second = explained()
    cache.unlink()
    assert second == explained() != first


@pytest.fixture(scope="module")
def circuit(run, tmp_path_factory) -> Path:
    """A circuit.json of `run` (a quick search, not to be modified: copy it first)."""
    out = tmp_path_factory.mktemp("circuit")
    args = ["prune", str(run), "--task", TASK, "--steps", "2", "--n-train", "8", "--n-test", "8"]
    assert (
        main([*args, "--out", str(out), "--quiet", "--target-loss", "10", "--allow-trivial"]) == 0
    )
    return out / "circuit.json"


def test_explain_refuses_another_model_for_a_circuit(tmp_path, run, circuit, corpus_dir, capsys):
    m, t = tiny_configs(corpus_dir, n_ctx=48, d_model=64, steps=2)
    other = train(m, t, tmp_path / "other", progress=False)
    c = tmp_path / "circuit.json"
    shutil.copy(circuit, c)
    before = c.read_bytes()
    fails(capsys, ["explain", str(c), "--model", str(other)], str(other), "d_model")
    assert c.read_bytes() == before


# ---------- issue 35, 4: two writers into one folder ----------

QUICK_PRUNE = ["--task", TASK, "--steps", "2", "--n-train", "8", "--n-test", "8", "--quiet"]
QUICK_PRUNE += ["--target-loss", "10", "--allow-trivial"]


@contextlib.contextmanager
def another_writer(folder: Path):
    """Another process holding the folder's writer lock, as a command writing there would;
    yields its pid."""
    code = "import sys, time\nfrom sparsecircuits.io import writer_lock\n"
    code += "with writer_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n"
    p = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"held\n"
        yield p
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def test_a_second_writer_is_refused_by_name(tmp_path, run, corpus_dir, capsys):
    r = copy_run(run, tmp_path / "r")
    c = tmp_path / "c"
    c.mkdir()
    s = write_fake_study(tmp_path / "s")
    with another_writer(r) as w1, another_writer(c) as w2, another_writer(s) as w3:
        before = snapshot(tmp_path)
        busy = "is being written by another process (pid {})"
        fails(capsys, ["train", "--resume", "--out", str(r), "--quiet"], busy.format(w1.pid))
        args = ["train", *TINY, "--data", str(corpus_dir), "--set", "seed=2", "--out", str(r)]
        fails(capsys, args, f"{r} " + busy.format(w1.pid))
        fails(capsys, ["prune", str(run), *QUICK_PRUNE, "--out", str(c)], busy.format(w2.pid))
        fails(capsys, ["study", "--summary", "--out", str(s)], f"{s} " + busy.format(w3.pid))
        assert snapshot(tmp_path) == before
        w1.send_signal(signal.SIGKILL)  # a killed writer's lock goes with it
        w1.wait()
    assert main(["train", "--resume", "--out", str(r), "--quiet"]) == 0


def test_prune_keeps_an_existing_circuit_unless_forced(tmp_path, run, circuit, capsys):
    c = tmp_path / "c"
    c.mkdir()
    (c / "circuit.json").write_text("mine")
    args = ["prune", str(run), *QUICK_PRUNE, "--out", str(c)]
    fails(capsys, args, str(c / "circuit.json"), "--force")
    assert (c / "circuit.json").read_text() == "mine"
    assert main([*args, "--force"]) == 0
    assert json.loads((c / "circuit.json").read_text())["task"] == TASK


# ---------- issue 35, 5: a diverging run ----------


@pytest.mark.parametrize("lr", ["1e12", "1e308"])
def test_training_stops_at_the_first_non_finite_loss(tmp_path, corpus_dir, capsys, lr):
    out = tmp_path / "r"
    args = ["train", *TINY, "--set", "steps=6", f"lr={lr}", "--data", str(corpus_dir)]
    fails(capsys, [*args, "--out", str(out), "--quiet"], "lr", "diverged")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) < 6 and all(math.isfinite(row["train_loss"]) for row in rows)


# ---------- issue 35, 6 and 8: sizes past the machine's memory, pipes and devices ----------


def peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@pytest.mark.parametrize(
    "sets",
    [
        ["d_model=65536"],
        ["d_mlp=1000000000"],
        ["n_layer=1000000"],
        ["batch_size=10000000"],
        ["n_ctx=4096", "batch_size=100000"],
    ],
)
def test_a_config_past_the_machines_memory_is_refused_before_allocating(tmp_path, capsys, sets):
    out = tmp_path / "r"
    before = peak_kib()
    fails(capsys, ["train", *TINY, "--set", *sets, "--out", str(out)], "GiB available", "n_ctx")
    assert peak_kib() - before < 2**20 and not out.exists()  # under 1 GiB


def test_eval_batch_past_the_machines_memory_is_refused(run, capsys):
    before = peak_kib()
    argv = ["eval", str(run), "--batch-size", "100000000", "--device", "cpu"]
    fails(capsys, argv, "--batch-size 100000000", "GiB available")
    assert peak_kib() - before < 2**20


def test_config_naming_a_device_a_pipe_or_a_huge_file(tmp_path, capsys):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.json"
    with huge.open("wb") as f:
        f.truncate(200 * 2**20)  # sparse: no disk, but 200 MB to read
    before = peak_kib()
    for path, words in [("/dev/zero", "not a regular file"), (fifo, "not a regular file")]:
        fails(capsys, ["train", "--config", str(path), "--out", str(tmp_path / "r")], words)
    fails(capsys, ["train", "--config", str(huge), "--out", str(tmp_path / "r")], "200 MiB")
    assert peak_kib() - before < 2**20 and not (tmp_path / "r").exists()


def test_a_task_field_longer_than_any_context_is_refused(tmp_path, run, capsys):
    task = tmp_path / "t.jsonl"
    rows = [{"prompt": "x = '" + "a" * 2_000_000, "correct": "'", "incorrect": '"'}] * 2
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fails(
        capsys, ["prune", str(run), "--task", str(task), "--out", str(tmp_path / "c")], f"{task}:1"
    )


def test_report_images_that_are_huge_pipes_or_nul_named_are_that_sections_error(tmp_path):
    study = write_fake_study(tmp_path / "s")
    sec = study / "activations" / "section.json"
    with (study / "activations" / "big.png").open("wb") as f:
        f.truncate(300 * 2**20)
    os.mkfifo(study / "activations" / "pipe.png")
    before = peak_kib()
    cases = [("big.png", "300 MiB"), ("pipe.png", "not a regular file")]
    for name, words in [*cases, ("a\0b", "not a file in the section's folder")]:
        sec.write_text(json.dumps({"title": "t", "images": [{"caption": "c", "file": name}]}))
        report = build_report(study)
        assert report.stat().st_size < 20 * 2**20 and words in report.read_text()
    assert peak_kib() - before < 2**20


def test_view_answers_a_nul_path_with_404(tmp_path, capfd):
    study = write_fake_study(tmp_path / "s")
    with Server(study) as base:
        assert fetch(base + "%00")[0] == 404
        assert fetch(base + "report.html%00.x")[0] == 404
    assert "Traceback" not in capfd.readouterr().err


# ---------- issue 35, 9: bytes that are not UTF-8 ----------


def test_resume_after_a_torn_metrics_line_of_any_bytes(tmp_path, run):
    r = copy_run(run, tmp_path / "r")
    with (r / "metrics.jsonl").open("ab") as f:
        f.write(b'{"step": 4, "lo\xff\xfe')
    assert main(["train", "--resume", "--out", str(r), "--quiet"]) == 0
    rows = [json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]


def test_task_files_with_bad_text_name_the_line(tmp_path, capsys):
    good = json.dumps({"prompt": "x = 'a", "correct": "'", "incorrect": '"'}) + "\n"
    surrogate = tmp_path / "s.jsonl"
    surrogate.write_text(good + '{"prompt": "\\ud800", "correct": "a", "incorrect": "b"}\n')
    fails(capsys, ["tasks", "show", str(surrogate)], f"{surrogate}:2", "'prompt'")
    latin = tmp_path / "l.jsonl"
    latin.write_bytes(good.encode() * 2 + b'{"prompt": "caf\xe9"}\n')
    fails(capsys, ["tasks", "show", str(latin)], f"{latin}:3", "UTF-8")


# ---------- issue 35, 7: a config.json edited to other sizes than its weights ----------


def edit_config(run: Path, **model) -> None:
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"].update(model)
    (run / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "sizes", [{"n_layer": 3}, {"d_model": 64}, {"n_head": 4}, {"d_head": 8}, {"d_mlp": 256}]
)
def test_resume_refuses_a_config_edited_to_other_sizes(tmp_path, run, capsys, sizes):
    r = copy_run(run, tmp_path / "r")
    edit_config(r, **sizes)
    before = snapshot(r)
    fails(capsys, ["train", "--resume", "--out", str(r), "--quiet"], "model.safetensors")
    fails(capsys, ["eval", str(r), "--device", "cpu"], "model.safetensors", "config.json implies")
    assert snapshot(r) == before


def test_a_raised_n_layer_is_refused_before_building_the_model(tmp_path, run, capsys):
    r = copy_run(run, tmp_path / "r")
    edit_config(r, n_layer=1_000_000)
    before = peak_kib()
    fails(capsys, ["sample", str(r), "--device", "cpu"], "holds 2 layers", "n_layer=1000000")
    assert peak_kib() - before < 2**20


def test_sample_prompt_that_is_not_utf8(run, capsys):
    prompt = os.fsdecode(b"def \xff")  # as Python decodes such a command-line argument
    fails(capsys, ["sample", str(run), "--prompt", prompt], "--prompt", "UTF-8")


def test_out_path_that_is_not_utf8(tmp_path, corpus_dir, capsys):
    out = Path(os.fsdecode(bytes(tmp_path) + b"/r\xff"))
    args = ["train", *TINY, "--data", str(corpus_dir), "--out", str(out)]
    fails(capsys, args, "--out", "UTF-8")
    fails(capsys, args, "--out", "UTF-8")  # the retry is refused for the same reason
    assert list(tmp_path.iterdir()) == []


# ---------- issue 35, 10: numbers out of range ----------


@pytest.mark.parametrize(
    "argv, words",
    [
        (["sample", "{run}", "--temperature", "nan"], "--temperature nan"),
        (["sample", "{run}", "--temperature", "-1"], "--temperature -1"),
        (["sample", "{run}", "--top-k", "-5"], "--top-k -5"),
        (["sample", "{run}", "--seed", "99999999999999999999"], "--seed"),
        (["sample", "{run}", "--max-new-tokens", "-1"], "--max-new-tokens -1"),
        (["sample", "{run}", "-n", "-1"], "-n -1"),
        (["prune", "{run}", "--task", TASK, "--seed", "99999999999999999999"], "--seed"),
        (["prune", "{run}", "--task", TASK, "--steps", "-1"], "--steps -1"),
        (["eval", "{run}", "--threads", "100000"], "--threads 100000"),
        (["train", *TINY, "--set", "n_head=99999999999999999999"], "n_head"),
        (["train", *TINY, "--set", "batch_size=99999999999999999999"], "batch_size"),
    ],
)
def test_numbers_out_of_range_name_their_flag(tmp_path, run, capsys, argv, words):
    argv = [a.format(run=run) for a in argv] + ["--out", str(tmp_path / "o")]
    if argv[0] == "sample" or argv[0] == "eval":
        argv = argv[:-2]
    fails(capsys, argv, words)
    assert not (tmp_path / "o").exists()


# ---------- issue 35, 11: paths the system cannot name ----------


@pytest.mark.parametrize("too_long", ["x" * 300, "/".join(["y" * 200] * 25)])
def test_paths_too_long_are_one_line(tmp_path, run, corpus_dir, capsys, too_long):
    bad = str(tmp_path / too_long)
    fails(capsys, ["train", *TINY, "--data", str(corpus_dir), "--out", bad], "path too long")
    fails(capsys, ["prune", str(run), "--task", TASK, "--out", bad], "path too long")
    fails(capsys, ["eval", bad], "path too long")
    fails(capsys, ["study", "--summary", "--out", bad], "path too long")
    assert list(tmp_path.iterdir()) == []


# ---------- issue 35, 12 and 13: edited records, a user's own file, an unwritable cache ----------


def test_empty_data_list_is_refused(tmp_path, capsys):
    fails(capsys, ["train", *TINY, "--set", "data=[]", "--out", str(tmp_path / "r")], "data")
    assert not (tmp_path / "r").exists()


def test_half_precision_weights_load_as_float32(tmp_path, run, capsys):
    r = copy_run(run, tmp_path / "r")
    set_weights(r, lambda v: v.half())
    args = ["prune", str(r), *QUICK_PRUNE, "--out", str(tmp_path / "c")]
    assert main(args) == 0, capsys.readouterr().err
    assert main(["eval", str(r), "--device", "cpu", "--batches", "1"]) == 0


def test_integer_or_double_weights_load_only_when_exact(tmp_path, run, capsys):
    r = copy_run(run, tmp_path / "r")
    set_weights(r, lambda v: v.round().int() if v.dim() == 2 else v)  # integers: exact
    assert main(["sample", str(r), "--device", "cpu", "--max-new-tokens", "2"]) == 0
    set_weights(r, lambda v: v.double() + 1e-12 if v.dim() == 2 else v)  # not exact
    before = snapshot(r)
    fails(capsys, ["sample", str(r), "--device", "cpu"], "model.safetensors", "float64")
    assert snapshot(r) == before


def test_train_does_not_claim_a_users_own_config_json(tmp_path, corpus_dir, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.json").write_text('{"mine": 1}')
    args = ["train", *TINY, "--data", str(corpus_dir), "--out", str(out)]
    fails(capsys, args, str(out / "config.json"), "not a run")
    assert (out / "config.json").read_text() == '{"mine": 1}'


def test_explain_prints_its_answer_when_the_cache_cannot_be_written(tmp_path, run, capsys):
    r = copy_run(run, tmp_path / "r")
    (r / "explanations.json").mkdir()  # where the cache goes, a folder nothing replaces
    (r / "explanations.json" / "x").write_text("x")
    assert main(["explain", str(r), "--node", "blocks.0.mlp.hook_post[0]"]) == 0
    captured = capsys.readouterr()
    assert "blocks.0.mlp.hook_post[0]" in captured.out
    assert "note: " in captured.err and "not cached" in captured.err
