"""Run one worker process and find out, without trusting it, how the run ended.

The parent starts ``python -m diffquant.bench.worker SPEC.json`` in its own session (so a Ctrl-C
at the terminal reaches only the parent, which then kills the worker), with stdout and stderr
going to a log file, and a pipe for progress events. It then *blocks*: in ``select`` on the event
pipe and on a pidfd of the child (woken by an event, the child's exit or the deadline - never a
busy loop; two cores are not enough to lend one to a spinning parent). The outcome comes from
the exit status, not from the child: a signal, a non-zero exit, a missing or unreadable result
or the deadline each become an error with the reason and the tail of the log.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffquant.bench.spec import RunSpec

EventHandler = Callable[[dict[str, Any]], None]
TAIL_LINES = 25
_SIGNAL_HINTS = {
    signal.SIGKILL: "killed (SIGKILL) - often the kernel's out-of-memory killer; `dmesg` shows it",
    signal.SIGSEGV: "segmentation fault (SIGSEGV) in native code",
    signal.SIGABRT: "aborted (SIGABRT) - a native library gave up (assertion, CUDA error, abort())",
    signal.SIGBUS: "bus error (SIGBUS) - often a memory-mapped file that vanished or a full /dev/shm",
}


@dataclass
class WorkerOutcome:
    status: str  # "ok" | "error"
    error: str | None
    metrics: dict[str, Any]
    env: dict[str, Any] | None
    images: list[dict[str, Any]]
    returncode: int | None
    timed_out: bool
    wall_s: float
    log_tail: str
    last_event: dict[str, Any] = field(default_factory=dict)
    recipe_hash: str | None = None


def tail(path: Path, lines: int = TAIL_LINES, max_bytes: int = 64 * 1024) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(size - max_bytes, 0))
            data = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.replace("\r", "\n").splitlines()[-lines:])


def describe_exit(returncode: int | None, timed_out: bool, timeout_s: float | None) -> str:
    if timed_out:
        return f"worker timed out after {timeout_s:g} s and was killed"
    if returncode is None:
        return "worker did not finish"
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
        except ValueError:
            return f"worker killed by signal {-returncode}"
        return f"worker {_SIGNAL_HINTS.get(sig, f'killed by signal {sig.name}')}"
    return f"worker exited with status {returncode}"


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the worker and anything it started (its own session: process group id == its pid)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def run_worker(spec: RunSpec, workdir: Path, *, timeout_s: float | None = None,
               on_event: EventHandler | None = None, argv: Sequence[str] | None = None,
               extra_env: dict[str, str] | None = None) -> WorkerOutcome:
    """Run ``spec`` in a fresh interpreter and return how it ended. ``argv`` replaces the worker
    command (tests); it gets the spec path appended. ``extra_env`` is added to its environment."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = spec.write(workdir / "spec.json")
    result_path = Path(spec.result_path)
    result_path.unlink(missing_ok=True)
    log_path = workdir / "worker.log"
    command = [*(argv or [sys.executable, "-m", "diffquant.bench.worker"]), str(spec_path)]
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, **(extra_env or {}), DIFFQUANT_EVENT_FD=str(write_fd), PYTHONUNBUFFERED="1")
    started = time.monotonic()
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, pass_fds=(write_fd,), start_new_session=True)
    finally:
        os.close(write_fd)
    last_event: dict[str, Any] = {}
    timed_out = False
    try:
        timed_out = _wait(proc, read_fd, started, timeout_s, on_event, last_event)
        if timed_out:
            _kill_group(proc)
    except BaseException:  # Ctrl-C or a bug in the parent: never leave the worker running
        _kill_group(proc)
        raise
    finally:
        os.close(read_fd)
    wall_s = time.monotonic() - started
    return _outcome(proc.returncode, timed_out, timeout_s, wall_s, result_path, log_path, last_event)


def _wait(proc: subprocess.Popen[bytes], read_fd: int, started: float, timeout_s: float | None,
          on_event: EventHandler | None, last_event: dict[str, Any]) -> bool:
    """Block until the worker exits (True if the deadline passed first), forwarding events."""
    deadline = None if timeout_s is None else started + timeout_s
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(proc.pid)
        except OSError:
            pidfd = None
    selector = selectors.DefaultSelector()
    selector.register(read_fd, selectors.EVENT_READ, "events")
    if pidfd is not None:
        selector.register(pidfd, selectors.EVENT_READ, "exit")
    buffer = b""
    pipe_open = True
    try:
        while True:
            if proc.poll() is not None:  # reaps the child; cheap, and only once per wake-up
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return True
            # Without a pidfd (old kernels, non-Linux) wake once a second to look at the child.
            wait_s = remaining if pidfd is not None else min(remaining or 1.0, 1.0)
            if not pipe_open and pidfd is None:
                try:
                    proc.wait(timeout=wait_s)
                except subprocess.TimeoutExpired:
                    pass
                continue
            for key, _ in selector.select(wait_s):
                if key.data == "events":
                    chunk = os.read(read_fd, 65536)
                    if not chunk:
                        selector.unregister(read_fd)
                        pipe_open = False
                        continue
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        _dispatch(line, on_event, last_event)
    finally:
        selector.close()
        if pidfd is not None:
            os.close(pidfd)
    # Drain events written just before the exit.
    try:
        os.set_blocking(read_fd, False)
        while pipe_open:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            buffer += chunk
    except (BlockingIOError, OSError):
        pass
    for line in buffer.split(b"\n"):
        _dispatch(line, on_event, last_event)
    return False


def _dispatch(line: bytes, on_event: EventHandler | None, last_event: dict[str, Any]) -> None:
    if not line.strip():
        return
    try:
        event = json.loads(line)
    except ValueError:
        return
    if event.get("event") == "phase":
        last_event["phase"] = event.get("phase")
    last_event.update({k: v for k, v in event.items() if k != "event"})
    if on_event is not None:
        on_event(event)


def _outcome(returncode: int | None, timed_out: bool, timeout_s: float | None, wall_s: float,
             result_path: Path, log_path: Path, last_event: dict[str, Any]) -> WorkerOutcome:
    log_tail = tail(log_path)
    result: dict[str, Any] | None = None
    if result_path.is_file() and not timed_out:
        try:
            result = json.loads(result_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            result = None
    metrics = dict(result.get("metrics") or {}) if result else {}
    metrics["run.wall_s"] = wall_s
    metrics["run.returncode"] = returncode
    env = result.get("env") if result else None
    images = list(result.get("images") or []) if result else []
    recipe_hash = result.get("recipe_hash") if result else None
    if returncode == 0 and not timed_out and result is not None and result.get("status") == "ok":
        return WorkerOutcome("ok", None, metrics, env, images, returncode, False, wall_s, log_tail, last_event,
                             recipe_hash)
    metrics["worker.last_phase"] = last_event.get("phase")
    if result is not None and result.get("error") and not timed_out:
        if result.get("error_kind") == "user":
            error = str(result["error"])
        else:
            error = f"{result['error']}\n--- worker log (last lines) ---\n{log_tail}"
    else:
        reached = f" during {last_event['phase']}" if last_event.get("phase") else ""
        why = describe_exit(returncode, timed_out, timeout_s)
        if returncode == 0 and not timed_out:
            why = "worker exited without writing a result"
        error = f"{why}{reached}\n--- worker log (last lines) ---\n{log_tail}".rstrip()
    return WorkerOutcome("error", error, metrics, env, images, returncode, timed_out, wall_s, log_tail,
                         last_event, recipe_hash)
