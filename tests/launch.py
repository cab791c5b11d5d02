"""Training runs for the tests: `ymn-train` forked from a server that imported it once.

A fresh interpreter spends most of a short test run importing torch, Lightning, diffusers and
transformers. A multiprocessing *forkserver* imports `ymn.train` once (and runs no torch op, so
no thread pool exists when it forks); every run is a fork of it that sets its environment,
working directory and argv, redirects its output to files and calls the Hydra entry point, as
`python -m ymn.train` would. The child is a real process: it can be killed, it exits with the
run's code, and its DataLoader workers fork from it as they do from a fresh run. Runs whose
Lightning strategy starts more processes from `sys.argv` (`trainer=ddp`) stay plain
subprocesses. Fresh-interpreter start-up itself stays covered by `tests/test_entry_points.py`.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

TRAIN_MODULE = "ymn.train"
_context: multiprocessing.context.ForkServerContext | None = None


def forkable(args: list[str]) -> bool:
    """`python -m ymn.train ...` without a strategy that re-runs `sys.argv` in new processes."""
    is_train = args[:3] == [sys.executable, "-m", TRAIN_MODULE]
    return is_train and not any(arg.startswith("trainer=ddp") for arg in args)


def _server() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload([TRAIN_MODULE, __name__])
    return _context


def _redirect(out: str, err: str) -> None:
    """fd 1 → `out`, fd 2 → `err` (one shared descriptor when they are the same file)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    out_fd = os.open(out, flags, 0o644)
    err_fd = out_fd if err == out else os.open(err, flags, 0o644)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    for fd in {out_fd, err_fd}:
        os.close(fd)


def _run_train(argv: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """The child: become `python -m ymn.train ARGV` in `cwd` with `env`, then exit its code."""
    _redirect(out, err)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    extra_paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:0] = [cwd, *extra_paths]
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # A forkserver child inherits "forkserver" as its start method; a fresh interpreter has the
    # platform default, which DataLoader workers use (fork on Linux: they inherit the stream).
    multiprocessing.set_start_method(multiprocessing.get_all_start_methods()[0], force=True)
    import torch

    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))
    import ymn.train

    sys.argv = [TRAIN_MODULE, *argv]
    code = 0
    try:
        ymn.train.main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # a forked child skips them; a real interpreter runs them
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class ForkedRun:
    """The `subprocess.Popen` surface the tests use (pid, poll, wait, send_signal, kill,
    returncode) over one forked training run."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, out: Path, err: Path):
        self.args = args
        self.out, self.err = out, err
        self.process = _server().Process(
            target=_run_train, args=(args[3:], env, str(cwd), str(out), str(err))
        )
        self.process.start()
        self.pid = self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.process.exitcode

    def send_signal(self, sig: int) -> None:
        if self.process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def run_forked(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess:
    """`subprocess.run(args, capture_output=True, text=True, timeout=...)` for a forked run."""
    with tempfile.TemporaryDirectory(prefix="ymn-run-") as folder:
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        run = ForkedRun(args, env, cwd, out, err)
        try:
            run.wait(timeout)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait(60)
            raise
        return subprocess.CompletedProcess(
            args, run.returncode, out.read_text(errors="replace"), err.read_text(errors="replace")
        )
