"""Stopping a child process (a node under test, dcfm-bag-eval's node, dcfm-stress's node) the same way
everywhere: one signal, a bounded wait, then SIGKILL."""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen, sig: int, timeout: float) -> int:
    """Send `sig` to a still running `proc` and wait; SIGKILL it if it has not exited after `timeout`
    s. Returns the exit status (negative for a signal)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)
