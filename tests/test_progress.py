"""Progress of long steps: drawn on a terminal with the elapsed time, then one summary line;
nothing on a pipe or a file, nothing with ``--quiet``."""

import io
import os
import pty
import subprocess
import sys
import threading
import time

import pytest

from zeroskip import progress

from test_cli import small_graph_file  # noqa: F401 (a fixture)


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def loud():
    progress.set_quiet(False)
    yield
    progress.set_quiet(False)


def test_a_counted_step_draws_a_bar_then_one_summary_line():
    stream = Terminal()
    with progress.step("training", total=3, unit="epochs", stream=stream) as shown:
        for _ in range(3):
            shown.advance()
    text = stream.getvalue()
    assert "training: " in text and "3/3" in text
    lines = text.replace("\r", "\n").strip().splitlines()
    assert lines[-1].startswith("training: 3/3 epochs, done in ") and lines[-1].endswith(" s")
    assert sum(line.startswith("training: 3/3 epochs, done in") for line in lines) == 1


def test_a_step_without_a_count_shows_its_elapsed_time_while_it_runs():
    stream = Terminal()
    with progress.step("Verilator build of top", stream=stream):
        time.sleep(2.5 * progress.REFRESH_SECONDS)
        drawn = stream.getvalue()
    assert "Verilator build of top: 00:0" in drawn  # redrawn by the ticker, before the end
    last = stream.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("Verilator build of top: done in 1.")


def test_a_failed_step_says_so():
    stream = Terminal()
    with pytest.raises(KeyError), progress.step("nextpnr: place", stream=stream):
        raise KeyError("x")
    assert "nextpnr: place: failed after " in stream.getvalue()


def test_nothing_off_a_terminal_or_when_quiet():
    plain = io.StringIO()
    with progress.step("compile", stream=plain), \
            progress.step("train", total=2, stream=plain) as shown:
        shown.advance(2)
    assert plain.getvalue() == ""
    progress.set_quiet()
    stream = Terminal()
    with progress.step("compile", stream=stream):
        pass
    assert stream.getvalue() == ""


def run_on_terminal(argv):
    """Run a command with its stderr on a pseudo-terminal: (exit status, what the terminal
    got, stdout)."""
    master, slave = pty.openpty()
    received = []
    reader = threading.Thread(target=lambda: _drain(master, received), daemon=True)
    reader.start()
    result = subprocess.run(argv, stderr=slave, stdout=subprocess.PIPE, text=True, timeout=300)
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    return result.returncode, b"".join(received).decode(errors="replace"), result.stdout


def _drain(descriptor, received):
    while True:
        try:
            chunk = os.read(descriptor, 4096)
        except OSError:  # the other side closed
            return
        if not chunk:
            return
        received.append(chunk)


def test_compile_shows_progress_on_a_terminal_only(small_graph_file, tmp_path):  # noqa: F811
    command = [sys.executable, "-m", "zeroskip", "compile", str(small_graph_file)]
    code, terminal, out = run_on_terminal(command + ["-o", str(tmp_path / "a")])
    assert code == 0 and "wrote" in out
    lines = terminal.replace("\r", "\n").strip().splitlines()
    assert any(line.startswith("compile: 00:0") for line in lines), terminal  # while it runs
    assert lines[-1].startswith("compile: done in ") and lines[-1].endswith(" s"), terminal
    code, terminal, _ = run_on_terminal(command + ["-o", str(tmp_path / "b"), "--quiet"])
    assert code == 0 and terminal == ""
    piped = subprocess.run(command + ["-o", str(tmp_path / "c")], capture_output=True,
                           text=True, timeout=300)
    assert piped.returncode == 0 and piped.stderr == ""
