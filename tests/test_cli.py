"""The command line: every failure is one line on stderr with a non-zero exit status (2 bad
input, 1 failed run, 130 Ctrl-C) and no traceback unless --debug / SSVI_DEBUG=1; --help lists
the allowed values; --progress false hides only the bars."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssvi import experiments as E
from ssvi.__main__ import main

REPO = Path(__file__).resolve().parent.parent
SMALL = ["train", "--preset", "tiny", "--dataset", "synthetic", "--model", "mlp", "--width", "0.05",
         "--train-subset", "256", "--test-subset", "128", "--progress", "false"]


def error_line(stderr: str) -> str:
    """The one error line; warnings (``warning: ...``) may precede it, nothing else may."""
    lines = [ln for ln in stderr.strip().splitlines() if not ln.startswith("warning: ")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def run_main(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_lists_the_allowed_values_of_every_choice_field(capsys):
    from ssvi.config import CHOICES
    rc, out, _ = run_main(["train", "--help"], capsys)
    assert rc == 0
    flat = " ".join(out.split())
    for name, values in CHOICES.items():
        assert "{" + ",".join(values) + "}" in flat, name          # the metavar
        assert "one of " + ", ".join(values) in flat, name         # the help text
    assert "{" + ",".join(sorted(E.PRESETS)) + "}" in flat and "--quiet" in flat and "--debug" in flat


@pytest.mark.parametrize("extra,needle", [
    (["--removal", "nope"], "removal='nope' is not allowed"),
    (["--epochs", "abc"], "--epochs: invalid"),
    (["--lr", "inf"], "lr=inf is not allowed"),
    (["--sparsity", "0.9", "--density", "0.1"], "either --sparsity or --density"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--device", "cuda:7"], "cuda:7"),
    (["--device", "tpu"], "device"),
    (["--train-subset", "99999"], "train_subset=99999"),
])
def test_bad_input_is_one_line_and_exit_status_2(extra, needle, capsys):
    rc, out, err = run_main(SMALL + extra, capsys)
    assert rc == 2
    line = error_line(err)
    assert line.startswith("error: ") and needle in line, line


def test_missing_data_is_one_line_naming_the_folder(tmp_path, capsys):
    where = tmp_path / "nowhere"
    rc, _, err = run_main(SMALL + ["--dataset", "cifar10", "--data-dir", str(where)], capsys)
    assert rc == 2
    line = error_line(err)
    assert str(where) in line and "make_cifar10.py" in line


def test_run_dir_that_is_a_file_is_refused_at_start(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    rc, out, err = run_main(SMALL + ["--run-dir", str(tmp_path / "f")], capsys)
    assert rc == 2 and "is a file, not a folder" in error_line(err)
    assert "epoch" not in out                                  # refused before any epoch


def test_corrupt_checkpoint_and_changed_configuration(tmp_path, capsys):
    run = SMALL + ["--epochs", "1", "--run-dir", str(tmp_path / "run")]
    assert run_main(run, capsys)[0] == 0
    rc, _, err = run_main(run + ["--lr", "0.02"], capsys)
    assert rc == 2
    line = error_line(err)
    assert "different configuration" in line and "lr: stored 0.01, given 0.02" in line
    ck = tmp_path / "run" / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:200])
    rc, _, err = run_main(run, capsys)
    assert rc == 1 and "corrupt or truncated" in error_line(err)


def test_divergence_exits_1_with_advice_that_works(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    rc, out, err = run_main(SMALL + ["--lr", "1e6", "--run-dir", run_dir,
                                     "--results-path", str(tmp_path / "r.json")], capsys)
    assert rc == 1
    line = error_line(err)
    assert line.startswith("error: training diverged in epoch 1/2") and "--lr 100000" in line
    assert not (tmp_path / "r.json").exists()
    rc, _, _ = run_main(SMALL + ["--lr", "100000", "--run-dir", run_dir], capsys)
    assert rc in (0, 1)      # the advised command runs (and may still diverge at such an lr)


def test_progress_false_hides_only_the_bars_and_quiet_hides_the_lines(tmp_path, capsys):
    run = SMALL + ["--epochs", "1", "--run-dir", str(tmp_path)]
    rc, out, err = run_main(run, capsys)
    assert rc == 0 and "epoch   1/1  loss" in out and err == ""
    rc, out, _ = run_main(run, capsys)
    assert rc == 0 and "resumed from" in out
    rc, out, _ = run_main(run + ["--quiet"], capsys)
    assert rc == 0 and out.lstrip().startswith("{")
    assert json.loads(out)["metrics"]["accuracy"] >= 0


def _cli(args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "ssvi", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=300, **kw)


def test_real_process_one_line_and_tracebacks_only_on_request():
    bad = SMALL + ["--lr", "1e6"]
    plain = _cli(bad)
    assert plain.returncode == 1
    assert error_line(plain.stderr).startswith("error: training diverged")
    for debug in (_cli(bad + ["--debug"]), _cli(bad, env={"SSVI_DEBUG": "1"})):
        assert debug.returncode != 0 and "Traceback" in debug.stderr
        assert "DivergenceError" in debug.stderr or "NonFiniteLossError" in debug.stderr


def test_ctrl_c_is_one_line_saying_how_to_resume(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ssvi", *SMALL, "--epochs", "500",
                             "--run-dir", str(run_dir)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (run_dir / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "no checkpoint after 240 s"
            time.sleep(0.2)
        # the trainer notes the saved epoch just after the file lands; on a loaded machine the
        # process can be descheduled in between (a known race in ssvi.trainer.train)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    line = error_line(err)
    assert line.startswith("interrupted; run the same command again to resume from "
                           f"{run_dir / 'checkpoint.pt'} (epoch ")


def test_notebook_mode_shows_an_ssvi_error_as_one_line(capsys):
    """In IPython (Jupyter, papermill) an SSVIError prints its one line, the cell still fails."""
    from IPython.core.interactiveshell import InteractiveShell
    from ssvi import errors
    shell = InteractiveShell.instance()
    try:
        assert errors.notebook_mode()
        res = shell.run_cell("from ssvi.errors import DataError\n"
                             "raise DataError('no CIFAR-10 in /x; put it there')")
        out = capsys.readouterr()
        assert isinstance(res.error_in_exec, errors.DataError)   # the cell failed
        assert "error: no CIFAR-10 in /x; put it there" in out.out + out.err
        assert "Traceback" not in out.out + out.err
        res = shell.run_cell("raise KeyError('a bug')")            # other errors: traceback
        out = capsys.readouterr()
        assert "KeyError" in out.out + out.err
    finally:
        shell.set_custom_exc((), None)
        InteractiveShell.clear_instance()
