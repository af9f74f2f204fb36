"""The grading kernel: ipykernel under resource limits, used by `make autograde` only.

Students' code is run by nbgrader in a Jupyter kernel. This module is that kernel's launcher
(the kernelspec ``dgm-grader``, written into the venv by `install_kernelspec`):

    python -m lib.sandbox -f <connection file>

It stays as a small supervisor process and starts ipykernel as its child, with

- resource limits on the child (inherited by anything it starts): address space
  (`MEMORY_BYTES`), size of any file written (`FILE_BYTES`), CPU seconds per process
  (`CPU_SECONDS`), no core dumps, and the user's process count (RLIMIT_NPROC: what the user
  runs now plus a margin; Linux does not apply it to root, hence the next point);
- a watchdog: the supervisor is a "child subreaper", so every process the kernel starts stays
  its descendant even when orphaned or moved to another session. When there are more than
  `PROCESSES` of them (a fork bomb), all are killed, which nbgrader sees as a dead kernel;
- a clean exit: when the kernel stops, for whatever reason, or when nbgrader goes away,
  every remaining descendant is killed, so nothing a submission started outlives its grading.

Timeouts (per cell and per notebook), kernel deaths and output size are handled on nbgrader's
side by `lib.autograde.GradingExecute`, with the limits named in nbgrader_config.py.
"""
import ctypes
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

KERNEL_NAME = "dgm-grader"
MEMORY_BYTES = 6 * 2**30  # address space of each process: torch and a kernel need about 2 GiB
FILE_BYTES = 64 * 2**20  # the largest file a submission may write
CPU_SECONDS = 900  # CPU time of each process (the per-cell wall-clock timeout comes first)
PROCESSES = 64  # processes a submission may run at once (the kernel included)
WATCH_INTERVAL_S = 0.1
PR_SET_CHILD_SUBREAPER = 36


def install_kernelspec(prefix: str = sys.prefix) -> Path:
    """Write the ``dgm-grader`` kernelspec into ``<prefix>/share/jupyter/kernels`` (idempotent)."""
    folder = Path(prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "lib.sandbox", "-f", "{connection_file}"],
        "display_name": "Python 3 (grading, resource-limited)",
        "language": "python",
        "metadata": {"debugger": False},
    }
    text = json.dumps(spec, indent=1) + "\n"
    path = folder / "kernel.json"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return folder


def limit_resources() -> None:
    """Applied in the kernel process before ipykernel starts; inherited by its children."""
    for limit, value in ((resource.RLIMIT_AS, MEMORY_BYTES), (resource.RLIMIT_FSIZE, FILE_BYTES),
                         (resource.RLIMIT_CPU, CPU_SECONDS), (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_NPROC, user_tasks() + 4 * PROCESSES)):
        soft, hard = resource.getrlimit(limit)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(limit, (value, hard if hard != resource.RLIM_INFINITY else value))


def user_tasks() -> int:
    """Processes and threads of this user now: RLIMIT_NPROC counts them all, not just ours."""
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(Path(entry.path, "task")))
            except OSError:
                continue
    return count


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (threads not counted), from the parent links in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_bytes()
            except OSError:  # exited while we looked
                continue
            parent = int(stat.rsplit(b")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_descendants() -> dict[int, int]:
    """SIGKILL every descendant until none is left (a fork bomb may fork while we kill);
    return the wait statuses of the processes reaped on the way."""
    exited = {}
    for _ in range(1000):
        pids = descendants(os.getpid())
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
        exited |= reap()
    return exited | reap()


def reap() -> dict[int, int]:
    """Collect exited children (ours and adopted orphans); return {pid: wait status}."""
    done = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done[pid] = status


def main(argv: list[str]) -> int:
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupts are for the kernel (same process group)
    kernel = os.fork()
    if kernel == 0:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        limit_resources()
        os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", *argv])

    def forward(signum, _frame):
        try:
            os.kill(kernel, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, forward)
    grader, exited = os.getppid(), {}
    while kernel not in exited:
        time.sleep(WATCH_INTERVAL_S)
        exited |= reap()
        if os.getppid() != grader:  # nbgrader itself was stopped: nobody is listening any more
            break
        if kernel not in exited and len(descendants(os.getpid())) > PROCESSES:
            sys.stderr.write(f"grading kernel: more than {PROCESSES} processes, all stopped\n")
            break
    exited |= kill_descendants()
    return os.waitstatus_to_exitcode(exited[kernel]) if kernel in exited else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
