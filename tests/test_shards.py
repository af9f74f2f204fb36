"""Grading one class on several machines: shards (`course.autograde --shard i/n`) writing
concurrently into one PostgreSQL gradebook (``DB_URL``), each submission locked while it
is graded.

A real PostgreSQL server is started here (`postgres_server`: a throwaway cluster in a
temporary folder, as an unprivileged user, on a unix socket only), or the tests skip and
say why. The class:
six students, two small assignments ("probe" of tests/test_autograde.py and "probe2"), 12
submissions, among them a corrupt notebook, a kernel killer, wrong and blank answers, so
that what each earns is known by construction (`earned`). It is graded by three
concurrent shards into PostgreSQL, one of which is killed with SIGKILL while it grades and
then run again. Every nbgrader run is counted from the runs ledgers
(``.autograde/logs/<student>/<assignment>.runs``).
"""

import contextlib
import csv
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest

from course import autograde, sandbox
from tests.test_autograde import RIGHT_ADD, RIGHT_SQUARE, probe_notebook, probe_source

ROOT = Path(__file__).resolve().parent.parent
A, B = "probe", "probe2"
SHARDS = 3
pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------------------
# A throwaway PostgreSQL server


class PostgresUnavailable(Exception):
    pass


def _initdb() -> Path | None:
    found = shutil.which("initdb") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)), None
    )
    return Path(found).resolve() if found else None


class Server:
    def __init__(
        self, folder: Path, password: str, bindir: Path, user: pwd.struct_passwd | None
    ):
        self.folder, self.password, self.bindir, self.user = (
            folder,
            password,
            bindir,
            user,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://dgm:{self.password}@/{database}?host={self.folder}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database (dropped first if it is there); its URL."""
        import psycopg

        with psycopg.connect(
            host=str(self.folder),
            user="dgm",
            password=self.password,
            dbname="postgres",
            autocommit=True,
        ) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_server(server_user, command, **kwargs):
    """Run a PostgreSQL program as the unprivileged server user (initdb and postgres
    refuse root)."""
    ids = (
        {}
        if server_user is None
        else {"user": server_user.pw_uid, "group": server_user.pw_gid, "extra_groups": []}
    )
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, **ids, **kwargs
    )


@contextlib.contextmanager
def postgres_server(*, durable: bool = False):
    """A PostgreSQL cluster of its own: superuser ``dgm`` with a random password
    (scram-sha-256), listening on a unix socket in a 0700 folder only (no TCP), stopped
    and removed afterwards. ``durable=False`` turns fsync off (quicker tests);
    benchmarks keep PostgreSQL's defaults."""
    initdb = _initdb()
    if initdb is None:
        raise PostgresUnavailable(
            "PostgreSQL is not installed (no initdb; `make postgres` installs it as root)"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PostgresUnavailable(
            "psycopg is not installed (the [course] extra has psycopg[binary])"
        ) from None
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                "running as root, and there is no unprivileged `postgres` user to run "
                "the server as (Debian's postgresql package creates it)"
            ) from None
    folder = Path(tempfile.mkdtemp(prefix="dgm-pg-"))
    password = secrets.token_hex(16)
    (folder / "password").write_text(password)
    if user is not None:
        for path in (folder, folder / "password"):
            os.chown(path, user.pw_uid, user.pw_gid)
    folder.chmod(0o700)
    pg_ctl = str(initdb.parent / "pg_ctl")
    options = (
        f"-c listen_addresses='' -c unix_socket_directories='{folder}' "
        "-c max_connections=100"
    )
    if not durable:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    started = False
    try:
        done = _as_server(
            user,
            [
                str(initdb),
                "-D",
                str(folder / "data"),
                "-U",
                "dgm",
                "--pwfile",
                str(folder / "password"),
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            cwd=folder,
        )
        if done.returncode != 0:
            raise PostgresUnavailable(
                f"initdb failed: {(done.stderr or done.stdout).strip()[-300:]}"
            )
        done = _as_server(
            user,
            [
                pg_ctl,
                "-D",
                str(folder / "data"),
                "-l",
                str(folder / "log"),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            ],
            cwd=folder,
        )
        started = done.returncode == 0
        if not started:
            log = (
                (folder / "log").read_text(errors="replace")[-300:]
                if (folder / "log").exists()
                else ""
            )
            raise PostgresUnavailable(
                f"the server did not start: {(done.stderr + log).strip()[-300:]}"
            )
        yield Server(folder, password, initdb.parent, user)
    finally:
        if started:
            _as_server(
                user,
                [pg_ctl, "-D", str(folder / "data"), "-m", "fast", "-w", "stop"],
                cwd=folder,
            )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    try:
        with postgres_server() as server:
            yield server
    except PostgresUnavailable as why:
        pytest.skip(str(why))


# ----------------------------------------------------------------------------------------
# The class


def probe2_source():
    return probe_notebook(
        "# Probe 2\nTwo more tasks.",
        [
            (
                "double",
                "double(x)",
                "return 2 * x",
                "assert double(2) == 4",
                "assert double(-5) == -10",
                1,
            ),
            (
                "negate",
                "negate(x)",
                "return -x",
                "assert negate(3) == -3",
                "assert negate(-8) == 8",
                3,
            ),
        ],
    )


RIGHT = {
    A: {"add": RIGHT_ADD, "square": RIGHT_SQUARE},
    B: {
        "double": "def double(x):\n    return 2 * x",
        "negate": "def negate(x):\n    return -x",
    },
}
# the kernel dies in the first task's cell: 0 for it, the rest graded
KILLER = "import os\nos._exit(3)\n"
SPY = "import os\nprint('DB_URL seen by the kernel:', repr(os.environ.get('DB_URL')))\n"
# (student, assignment) -> what is handed in: "right", "wrong", "killer", "blank", "spy"
# or "corrupt". The names spread the 12 submissions 4/4/4 over three shards
# (autograde.shard_of).
CLASS = {
    ("ada", A): "right",
    ("ada", B): "spy",
    ("bob", A): "wrong",
    ("bob", B): "right",
    ("eve", A): "killer",
    ("eve", B): "wrong",
    ("hal", A): "right",
    ("hal", B): "blank",
    ("ivy", A): "corrupt",
    ("ivy", B): "right",
    ("jon", A): "blank",
    ("jon", B): "right",
}
# nbgrader runs for these
GRADED = sorted(key for key, kind in CLASS.items() if kind != "corrupt")


def answers(root: Path, assignment: str, kind: str):
    nb = nbformat.read(
        root / "notebooks" / assignment / f"{assignment}.ipynb", as_version=4
    )
    first, second = RIGHT[assignment]
    code = dict(RIGHT[assignment])
    if kind == "wrong":
        code[first] = code[first].replace("return ", "return 1 + ", 1)
    elif kind == "killer":
        code[first] = KILLER + code[first]
    elif kind == "spy":
        code[first] = SPY + code[first]
    for cell in nb.cells:
        grade_id = cell.metadata["nbgrader"]["grade_id"]
        if kind != "blank" and grade_id in code:
            cell.source = code[grade_id]
    return nb


def course(
    root: Path,
    *args: str,
    db: str | None = None,
    popen: bool = False,
    check: bool = True,
    **kwargs,
):
    """``python -m course ARGS`` in ``root``, with the gradebook at ``db`` (None:
    SQLite)."""
    env = {k: v for k, v in os.environ.items() if k != "DB_URL"}
    env["PYTHONPATH"] = str(ROOT)
    if db:
        env["DB_URL"] = db
    command = [sys.executable, "-m", "course", *args]
    if popen:
        return subprocess.Popen(
            command,
            cwd=root,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **kwargs,
        )
    done = subprocess.run(
        command, cwd=root, env=env, capture_output=True, text=True, timeout=600, **kwargs
    )
    assert done.returncode == 0 or not check, done.stdout + done.stderr
    return done


def rows(stdout: str) -> dict[tuple[str, str], str]:
    return {
        tuple(line.split()[:2]): line
        for line in stdout.splitlines()[1:]
        if len(line.split()) >= 3
    }


def make_class(root: Path, db: str | None = None) -> None:
    """solutions/ and nbgrader_config.py (short limits), released; every submission
    handed in."""
    for assignment, nb in ((A, probe_source()), (B, probe2_source())):
        (root / "solutions" / assignment).mkdir(parents=True)
        nbformat.write(nb, root / "solutions" / assignment / f"{assignment}.ipynb")
    config = (ROOT / "nbgrader_config.py").read_text()
    (root / "nbgrader_config.py").write_text(
        config + "\nc.Execute.timeout = 10\nc.GradingExecute.notebook_timeout = 60\n"
        "c.Execute.iopub_timeout = 4\n"
    )
    course(root, "release", db=db)
    for (student, assignment), kind in CLASS.items():
        folder = root / "submitted" / student / assignment
        folder.mkdir(parents=True)
        if kind == "corrupt":
            (folder / f"{assignment}.ipynb").write_text('{"cells": [')
        else:
            nbformat.write(
                answers(root, assignment, kind), folder / f"{assignment}.ipynb"
            )


def runs(root: Path) -> dict[tuple[str, str], list[tuple[dict, dict | None]]]:
    """(student, assignment) -> its nbgrader runs, as (start event, end event or None)."""
    found = {}
    for path in (root / ".autograde" / "logs").glob("*/*.runs"):
        events = [
            json.loads(line) for line in path.read_text().splitlines() if line.strip()
        ]
        ends = {e["run"]: e for e in events if e["event"] == "end"}
        found[path.parent.name, path.name.removesuffix(".runs")] = [
            (e, ends.get(e["run"])) for e in events if e["event"] == "start"
        ]
    return found


def gradebook_scores(url: str) -> dict[tuple[str, str], dict[str, float]]:
    from nbgrader.api import Gradebook

    with Gradebook(url) as gb:
        return {
            (s.student.id, a.name): {
                g.cell.name: g.score for nb in s.notebooks for g in nb.grades
            }
            for a in gb.assignments
            for s in a.submissions
        }


def alive(snapshot: dict[int, bytes]) -> list[int]:
    """The processes of ``snapshot`` (pid -> start time) still running (not the same pid
    reused)."""
    left = []
    for pid, started in snapshot.items():
        fields = sandbox._stat(pid)
        if fields is not None and fields[19] == started and fields[0] != b"Z":
            left.append(pid)
    return left


def working_in(root: Path) -> list[int]:
    """Live processes whose working directory is inside ``root`` (nbgrader runs there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")).is_relative_to(root):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


# ----------------------------------------------------------------------------------------
# Three shards into PostgreSQL, one killed mid-run and run again


def by_shard() -> dict[int, list[tuple[str, str]]]:
    shards = {i: [] for i in range(SHARDS)}
    for student, assignment in sorted(CLASS):
        shards[autograde.shard_of(student, assignment, SHARDS)].append(
            (student, assignment)
        )
    return shards


@pytest.fixture(scope="module")
def sharded(postgres, tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded-class")
    db = postgres.create_database("sharded")
    make_class(root, db=db)
    shards = by_shard()
    victim = max(shards, key=lambda i: sum(CLASS[k] != "corrupt" for k in shards[i]))
    mine = [k for k in shards[victim] if CLASS[k] != "corrupt"]
    assert all(shards.values()) and len(mine) >= 2, (
        f"the class must give every shard work: {shards}"
    )
    started = time.monotonic()
    processes = {
        i: course(root, "autograde", "--shard", f"{i}/{SHARDS}", db=db, popen=True)
        for i in range(SHARDS)
    }
    # SIGKILL the victim while nbgrader grades its second submission: one done, one in
    # flight
    deadline, killed_during = time.monotonic() + 300, None
    while (
        killed_during is None
        and time.monotonic() < deadline
        and processes[victim].poll() is None
    ):
        seen = runs(root)
        done = [k for k in mine if any(end for _, end in seen.get(k, []))]
        open_ = [k for k in mine if any(end is None for _, end in seen.get(k, []))]
        if done and open_:
            # wait for the student's kernel (nbgrader -> the sandbox's supervisor -> the
            # kernel)
            tree, wait = {}, time.monotonic() + 30
            while (
                len(tree) < 3
                and time.monotonic() < wait
                and processes[victim].poll() is None
            ):
                time.sleep(0.1)
                tree = {
                    pid: fields[19]
                    for pid in sandbox.descendants(processes[victim].pid)
                    if (fields := sandbox._stat(pid)) is not None
                }
            processes[victim].send_signal(signal.SIGKILL)
            killed_during = open_[0]
        time.sleep(0.1)
    assert killed_during is not None, (
        "the shard finished (or stalled) before it could be killed mid-run"
    )
    outputs = {i: p.communicate(timeout=600) for i, p in processes.items()}
    concurrent_s = time.monotonic() - started
    assert processes[victim].returncode == -signal.SIGKILL
    for i, p in processes.items():
        if i != victim:
            assert p.returncode == 0, outputs[i]
    for _ in range(50):  # the killed shard's nbgrader and kernel must not outlive it
        left_running = alive(tree) + working_in(root)
        if not left_running:
            break
        time.sleep(0.2)
    after_kill = runs(root)
    rerun = course(
        root, "autograde", "--shard", f"{victim}/{SHARDS}", "--jobs", "2", db=db
    )
    course(root, "grades", db=db)
    return {
        "root": root,
        "db": db,
        "shards": shards,
        "victim": victim,
        "killed_during": killed_during,
        "outputs": outputs,
        "left_running": left_running,
        "tree": tree,
        "after_kill": after_kill,
        "rerun": rerun,
        "concurrent_s": concurrent_s,
    }


# ----------------------------------------------------------------------------------------
# Cheap checks: no grading


def test_shards_partition_the_class_the_same_way_everywhere():
    students = [f"student{i:03d}" for i in range(200)]
    shards = [
        {(s, a) for s in students for a in (A, B) if autograde.in_shard(s, a, (i, 4))}
        for i in range(4)
    ]
    assert sum(map(len, shards)) == 400 and len(set().union(*shards)) == 400, (
        "each submission in exactly one shard"
    )
    assert all(70 <= len(s) <= 130 for s in shards), [len(s) for s in shards]
    # fixed: a hash, not hash()
    assert autograde.shard_of("ada", A, 3) == 1 and autograde.shard_of("bob", A, 3) == 0
    assert autograde.parse_shard("0/3") == (0, 3) and autograde.parse_shard("2/3") == (
        2,
        3,
    )
    for bad, why in (
        ("3/3", "runs from 0 to 2"),
        ("1/0", "at least 1"),
        ("a/b", "takes i/n"),
    ):
        with pytest.raises(SystemExit, match=why):
            autograde.parse_shard(bad)


def test_on_sqlite_a_whole_run_refuses_company_and_shards_share_the_course(tmp_path):
    (tmp_path / "solutions" / A).mkdir(parents=True)
    (tmp_path / "solutions" / A / f"{A}.ipynb").write_text("{}")
    (tmp_path / "submitted").mkdir()
    # a whole run is going: nothing else starts, shard or not
    whole = autograde._lock(tmp_path)
    for args in ([], ["--shard", "0/2"]):
        done = course(tmp_path, "autograde", *args, check=False)
        assert done.returncode != 0 and "another autograde is running" in done.stderr, (
            done.stderr
        )
    whole.close()
    # a shard is going: another shard may start, a whole run not
    shard = autograde._lock(tmp_path, shared=True)
    other = autograde._lock(tmp_path, shared=True)
    with pytest.raises(autograde.Busy, match="another autograde is running"):
        autograde._lock(tmp_path)
    shard.close()
    other.close()


def test_a_locked_submission_is_left_to_its_holder_file_locks(tmp_path):
    one, other = (
        autograde.FileLocks(tmp_path, "pid 1 on here"),
        autograde.FileLocks(tmp_path, "pid 2 on there"),
    )
    assert one.acquire("ada", A) is None
    assert other.acquire("ada", A) == "pid 1 on here"
    assert other.acquire("ada", B) is None, "only that submission is locked"
    one.close()
    assert other.acquire("ada", A) is None
    other.close()


def test_a_locked_submission_is_left_to_its_holder_advisory_locks(postgres):
    url = postgres.create_database("locks")
    one, other = (
        autograde.PostgresLocks(url, "pid 1 on a, shard 0/3"),
        autograde.PostgresLocks(url, "pid 2 on b"),
    )
    try:
        assert one.acquire("ada", A) is None
        assert other.acquire("ada", A) == "pid 1 on a, shard 0/3", (
            "a busy lock names its holder"
        )
        assert other.acquire("ada", B) is None
        # the holder's connection is gone (a killed grader): its locks go with it
        one.connection.invalidate()
        for _ in range(50):  # the server ends that session a moment later
            if other.acquire("ada", A) is None:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the lock of a grader whose connection closed was not released")
    finally:
        one.close()
        other.close()


# ----------------------------------------------------------------------------------------
# The class, graded


def test_every_submission_is_graded_exactly_once(sharded):
    final = runs(sharded["root"])
    assert sorted(final) == GRADED, (
        "nbgrader ran for every readable submission, never for the corrupt one"
    )
    for key in GRADED:
        completed = [start for start, end in final[key] if end is not None]
        assert len(completed) == 1, (key, final[key])
        assert all(end["status"] == 0 for _, end in final[key] if end is not None), final[
            key
        ]
    aborted = [
        (key, start) for key, seen in final.items() for start, end in seen if end is None
    ]
    assert [key for key, _ in aborted] == [sharded["killed_during"]], aborted
    for key in GRADED:  # and each by the shard it belongs to
        shard = autograde.shard_of(*key, SHARDS)
        assert all(f"shard {shard}/{SHARDS}" in start["by"] for start, _ in final[key]), (
            final[key]
        )


def test_the_shards_ran_at_the_same_time(sharded):
    final = runs(sharded["root"])
    spans = {}
    for key, seen in final.items():
        for start, end in seen:
            if end is not None:
                shard = autograde.shard_of(*key, SHARDS)
                first, last = spans.get(shard, (start["time"], end["time"]))
                spans[shard] = (min(first, start["time"]), max(last, end["time"]))
    others = [span for shard, span in spans.items() if shard != sharded["victim"]]
    assert max(s for s, _ in others) < min(e for _, e in others), (
        f"the shards' runs overlap in time: {spans}"
    )


def test_a_killed_shard_loses_only_its_in_flight_submission(sharded):
    victim, killed_during = sharded["victim"], sharded["killed_during"]
    assert len(sharded["tree"]) >= 3, (
        f"nbgrader and its kernel were running when the shard was killed: "
        f"{sharded['tree']}"
    )
    assert sharded["left_running"] == [], (
        "the killed shard's nbgrader and kernel stopped with it"
    )
    before = sharded["after_kill"]
    done_before = {
        key for key, seen in before.items() if any(end is not None for _, end in seen)
    }
    again = rows(sharded["rerun"].stdout)
    assert set(again) == set(sharded["shards"][victim]), (
        "the rerun grades its own shard only"
    )
    for key, line in again.items():
        if CLASS[key] == "corrupt":
            assert "not a valid notebook" in line
        elif key in done_before:
            assert "unchanged, graded before" in line, line
        else:
            assert "unchanged" not in line, line
    assert killed_during not in done_before and killed_during in again
    assert (
        f"shard {victim}/{SHARDS}: {len(sharded['shards'][victim])} of the class's "
        f"{len(CLASS)}" in sharded["rerun"].stderr
    )


def earned(assignment: str, kind: str) -> dict[str, float]:
    """What a submission of that kind earns, cell by cell, by construction: the oracle
    the shards' gradebook is held to."""
    points = {
        A: {"test_add": 2, "test_square": 2},
        B: {"test_double": 1, "test_negate": 3},
    }
    first = next(iter(points[assignment]))
    lost = {
        "right": set(),
        "spy": set(),
        "blank": set(points[assignment]),
        "wrong": {first},
        "killer": {first},  # the kernel dies in the first task's cell, and only that
    }[kind]
    return {cell: 0 if cell in lost else p for cell, p in points[assignment].items()}


def test_every_submission_earns_what_it_should(sharded):
    scores = gradebook_scores(sharded["db"])
    assert scores == {
        key: earned(key[1], kind) for key, kind in CLASS.items() if kind != "corrupt"
    }, "the corrupt notebooks never reach nbgrader; the rest earn their points"


def test_the_grades_csv_covers_the_whole_class(sharded):
    with open(sharded["root"] / "grades.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    got = {(row["student_id"], row["assignment"]): float(row["score"]) for row in table}
    scores = gradebook_scores(sharded["db"])
    assert set(got) == set(CLASS), "one row per student and assignment, from all shards"
    for key in CLASS:
        assert got[key] == sum(scores.get(key, {}).values()), key


def test_the_kernel_never_sees_the_database_url(sharded, postgres):
    nb = (sharded["root"] / "autograded" / "ada" / B / f"{B}.ipynb").read_text()
    assert "DB_URL seen by the kernel" in nb
    if not sandbox.isolated():
        pytest.skip(
            "not root: the kernel runs as this user, with this environment (README)"
        )
    assert "DB_URL seen by the kernel: None" in nb
    for path in (sharded["root"] / "autograded").rglob("*"):
        if path.is_file():
            assert postgres.password not in path.read_text(errors="replace"), path
