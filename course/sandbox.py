"""The grading kernel: ipykernel under resource limits, as an unprivileged user that
sees no secrets.

Students' code runs in a Jupyter kernel that `course.grader.GradingExecute` drives. This
module is that kernel's launcher (the kernelspec ``dgm-grader``, written into the venv
by `prepare`):

    python course/sandbox.py -f <connection file>

It stays as a small supervisor process and starts ipykernel below it, with

- resource limits (inherited by anything the kernel starts): address space
  (`MEMORY_BYTES`), size of any file written (`FILE_BYTES`), CPU seconds per process
  (`CPU_SECONDS`), no core dumps, and the number of processes (RLIMIT_NPROC);
- when grading runs as root (CI, a grading server, a container), a kernel that cannot
  reach the grader or its secrets:
  - it runs as a user id of its own (`kernel_uid`: one per kernel, none shared with the
    grader or with another kernel graded at the same time) in the group of the system
    user `USER` (created by `prepare` if missing), with no supplementary groups and
    ``no_new_privs``, so it cannot signal, trace or read the memory of the grader. The
    process limit counts per user id, so a fork bomb in one kernel cannot starve another
    of processes or threads;
  - in a mount namespace of its own, the course's secrets are covered by empty folders and
    files (`SECRETS`: solutions/, the gradebook, autograded/, submitted/ ...), and so is
    root's home, except the Python installation the kernel runs on;
  - in a PID namespace of its own, it sees no other process (nor another student's
    kernel);
  - its environment holds only `KEPT_ENV` (no database URL, no tokens), its home and
    working folder are a fresh private folder, removed afterwards;
- a watchdog: the supervisor is a "child subreaper", so every process the kernel starts
  stays its descendant even when orphaned. When there are more than `PROCESSES` of them
  (a fork bomb), all are killed, which the grader sees as a dead kernel;
- a clean exit: when the kernel stops, for whatever reason, or when the grader goes away,
  every remaining descendant is killed, so nothing a submission started outlives its
  grading.

Not as root, none of the isolation of the second point is possible: the kernel runs as the
grader's own user, who owns the files. The autograde summary then says so, once.
"""

import ctypes
import fcntl
import hashlib
import importlib.util
import json
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KERNEL_NAME = "dgm-grader"
USER = "dgm-grader"
# address space of each process: torch and a kernel need about 2 GiB
MEMORY_BYTES = 6 * 2**30
FILE_BYTES = 64 * 2**20  # the largest file a submission may write
# CPU time of each process (the per-cell wall-clock timeout comes first)
CPU_SECONDS = 900
PROCESSES = 64  # processes a submission may run at once (the kernel included)
WATCH_INTERVAL_S = 0.1
# Course paths the kernel must not read (relative to the course root, where grading runs).
SECRETS = (
    "solutions",
    "submitted",
    "autograded",
    "feedback",
    ".autograde",
    "notebooks",
    "gradebook.db",
    "gradebook.db-journal",
    "tests",
    ".git",
    "nbgrader_config.py",
)
KEPT_ENV = (
    "PATH",
    "LANG",
    "LC_ALL",
    "TZ",
    "CUDA_VISIBLE_DEVICES",
    "DGM_DEVICE",
    "DGM_PROGRESS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
)
PRIVATE_PREFIX = "dgm-kernel-"
# kernel user ids: this plus the supervisor's pid (no passwd entry)
KERNEL_UID_BASE = 2**30
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 36, 38
CLONE_NEWNS, CLONE_NEWPID = 0x00020000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = (
    1,
    2,
    4,
    4096,
    8192,
    16384,
    1 << 18,
)

_libc = ctypes.CDLL(None, use_errno=True)


def isolated() -> bool:
    """Whether kernels are isolated (only root can): the summary says so when they are
    not."""
    return sys.platform == "linux" and os.geteuid() == 0


def prepare(prefix: str = sys.prefix) -> Path:
    """Write the ``dgm-grader`` kernelspec into ``<prefix>/share/jupyter/kernels`` and,
    as root, create the unprivileged `USER` if it is missing. Idempotent, and safe when
    several graders (or test processes) prepare at once: one at a time, under a lock,
    and the kernelspec is replaced whole, never seen half written."""
    folder = Path(prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{KERNEL_NAME}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if isolated():
            _create_user()
        spec = {
            "argv": [
                sys.executable,
                str(Path(__file__).resolve()),
                "-f",
                "{connection_file}",
            ],
            "display_name": "Python 3 (grading, resource-limited)",
            "language": "python",
            "metadata": {"debugger": False},
        }
        text = json.dumps(spec, indent=1) + "\n"
        path = folder / "kernel.json"
        if not path.exists() or path.read_text() != text:
            staged = folder / "kernel.json.new"
            staged.write_text(text)
            os.replace(staged, path)
    return folder


def _create_user() -> None:
    try:
        pwd.getpwnam(USER)
        return
    except KeyError:
        pass
    done = subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            USER,
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 and "already exists" not in done.stderr:
        raise SystemExit(
            f"cannot create the grading user {USER!r} (useradd: "
            f"{done.stderr.strip()}); "
            "create it by hand, or grade as a user other than root"
        )


# ----------------------------------------------------------------------------------------
# Processes


def limit_resources() -> None:
    """Applied in the kernel process before ipykernel starts; inherited by its
    children."""
    for limit, value in (
        (resource.RLIMIT_AS, MEMORY_BYTES),
        (resource.RLIMIT_FSIZE, FILE_BYTES),
        (resource.RLIMIT_CPU, CPU_SECONDS),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NPROC, user_tasks() + 4 * PROCESSES),
    ):
        soft, hard = resource.getrlimit(limit)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(
            limit, (value, hard if hard != resource.RLIM_INFINITY else value)
        )


def user_tasks() -> int:
    """Processes and threads of this user now: RLIMIT_NPROC counts them all, not just
    ours."""
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(Path(entry.path, "task")))
            except OSError:
                continue
    return count


def _stat(pid: int) -> list[bytes] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_ticks(pid: int, own: bool = True) -> int:
    """Clock ticks of CPU used by ``pid`` (``own``) and by the children it has reaped."""
    fields = _stat(pid)
    if fields is None:
        return 0
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime if own else 0) + cutime + cstime


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (threads not counted), from the parent links in
    /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
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


# ----------------------------------------------------------------------------------------
# Isolation (root only)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(
    source: str, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _hide(path: Path) -> None:
    """Cover ``path`` with an empty, unreadable folder or file (in this mount namespace
    only)."""
    if path.is_symlink() or not path.exists():
        return
    if path.is_dir():
        _mount("none", str(path), "tmpfs", MS_NOSUID | MS_NODEV, "size=4k,mode=000")
    else:
        _mount("/dev/null", str(path), None, MS_BIND)


def _hide_root_home(keep: list[Path], staging: Path) -> None:
    """Cover root's home, then bring back the folders below it that the kernel runs on."""
    home = Path(pwd.getpwuid(0).pw_dir).resolve()
    needed = sorted(
        {p for p in keep if p.is_relative_to(home) and p != home},
        key=lambda p: len(p.parts),
    )
    needed = [
        p for p in needed if not any(p.is_relative_to(q) and p != q for q in needed)
    ]
    staged = []
    for i, path in enumerate(needed):
        spot = staging / str(i)
        spot.mkdir(parents=True)
        _mount(str(path), str(spot), None, MS_BIND | MS_REC)
        staged.append((spot, path))
    _mount("none", str(home), "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
    for spot, path in staged:
        path.mkdir(parents=True, exist_ok=True)
        _mount(str(spot), str(path), None, MS_MOVE)


def kernel_uid(supervisor: int) -> int:
    """The user id a kernel runs as: `KERNEL_UID_BASE` plus its supervisor's pid, which
    no other live process has, so no two kernels share one. RLIMIT_NPROC counts a user
    id's processes and threads together: with one id per kernel, the `PROCESSES` limit
    is each kernel's own. Where that id is not mapped (a user namespace with a short id
    map), the `USER`'s id."""
    uid = KERNEL_UID_BASE + supervisor
    for line in Path("/proc/self/uid_map").read_text().splitlines():
        inside, _, count = (int(field) for field in line.split())
        if inside <= uid < inside + count:
            return uid
    return pwd.getpwnam(USER).pw_uid


def isolate(course: Path, private: Path, uid: int, gid: int) -> None:
    """In the kernel's own process, before ipykernel starts: the namespaces, the hidden
    paths, then the unprivileged user (run only as root)."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare")
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    repository = lib_repository()
    runtime = [
        Path(sys.base_prefix).resolve(),
        Path(sys.prefix).resolve(),
        course.resolve(),
        repository,
    ]
    _hide_root_home(runtime, private / ".mounts")
    # the course, and the repository lib is imported from
    for folder in {course.resolve(), repository}:
        for name in SECRETS:
            _hide(folder / name)
    # this PID namespace's processes only
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV)
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    os.chdir(private)


def lib_repository() -> Path:
    """The folder that holds the ``lib`` the kernel imports (this repository, for an
    editable install): its solutions/ are as secret as the course's, when the course is
    elsewhere."""
    spec = importlib.util.find_spec("lib")
    return (
        Path(spec.origin).resolve().parents[1]
        if spec and spec.origin
        else Path(__file__).resolve().parents[1]
    )


def private_prefix(course: Path) -> str:
    """The name prefix of the kernels' private folders for one course (tests find them
    by it)."""
    return (
        PRIVATE_PREFIX
        + hashlib.sha256(str(course.resolve()).encode()).hexdigest()[:8]
        + "-"
    )


def kernel_environment(private: Path) -> dict[str, str]:
    env = {k: os.environ[k] for k in KEPT_ENV if k in os.environ}
    env.update(
        USER=USER,
        LOGNAME=USER,
        HOME=str(private),
        TMPDIR=str(private),
        MPLCONFIGDIR=str(private / ".matplotlib"),
        IPYTHONDIR=str(private / ".ipython"),
        PYTHONNOUSERSITE="1",
    )
    return env


# ----------------------------------------------------------------------------------------
# The supervisor


def main(argv: list[str]) -> int:
    if sys.platform == "linux":
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # interrupts are for the kernel (same process group)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    course = Path(os.environ.get("DGM_COURSE_ROOT", os.getcwd()))  # set by the grader
    private = Path(tempfile.mkdtemp(prefix=private_prefix(course)))
    # decided once: in the kernel's process it is false after setuid
    isolating = isolated()
    if isolating:
        uid, gid = kernel_uid(os.getpid()), pwd.getpwnam(USER).pw_gid
        i = argv.index("-f") + 1
        # the kernel cannot read the grader's runtime folder
        connection = private / "kernel.json"
        shutil.copyfile(argv[i], connection)
        argv = [*argv[:i], str(connection), *argv[i + 1 :]]
        os.chown(private, uid, gid)
        os.chown(connection, uid, gid)
        os.chmod(private, 0o700)
        os.chmod(connection, 0o600)
        # the next child is PID 1 of a new namespace
        _check(_libc.unshare(CLONE_NEWPID), "unshare")
    kernel = os.fork()
    if kernel == 0:
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if isolating:
                isolate(course, private, uid, gid)
            limit_resources()
            os.execve(
                sys.executable,
                [sys.executable, "-m", "ipykernel_launcher", *argv],
                kernel_environment(private) if isolating else os.environ,
            )
        except BaseException as err:
            sys.stderr.write(f"grading kernel: could not start ({err})\n")
        os._exit(127)

    def forward(signum, _frame):
        try:
            os.kill(kernel, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, forward)
    grader, exited = os.getppid(), {}
    try:
        while kernel not in exited:
            time.sleep(WATCH_INTERVAL_S)
            exited |= reap()
            # the grader itself was stopped: nobody is listening any more
            if os.getppid() != grader:
                break
            if kernel not in exited and len(descendants(os.getpid())) > PROCESSES:
                sys.stderr.write(
                    f"grading kernel: more than {PROCESSES} processes, all stopped\n"
                )
                break
        exited |= kill_descendants()
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return os.waitstatus_to_exitcode(exited[kernel]) if kernel in exited else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
