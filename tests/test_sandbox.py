"""The grading kernel's isolation between students (course.sandbox), tried with the
attack it stops.

Two kernels graded at the same time (``autograde --jobs 2``) must not be able to starve
each other. The process limit (RLIMIT_NPROC) counts every process and thread of a user
id; when all kernels ran as one user, a submission that spawned threads up to its own
limit left a kernel started just before it unable to start a single thread, and that
student's whole grading run failed. Each kernel now has a user id of its own
(`course.sandbox.kernel_uid`).
"""

import os

import pytest
from jupyter_client.manager import start_new_kernel

from course import sandbox

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not sandbox.isolated(), reason="kernels are isolated only when grading as root"
    ),
]

HOLD_EVERY_THREAD = """
import threading
threading.stack_size(64 * 1024)
release, held = threading.Event(), []
while len(held) < 100_000:
    try:
        thread = threading.Thread(target=release.wait)
        thread.start()
    except RuntimeError:  # can't start new thread: this kernel's process limit is reached
        break
    held.append(thread)
print(len(held))
"""

START_THREADS = """
import os, threading
threading.stack_size(64 * 1024)
threads = [threading.Thread(target=lambda: None) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(os.getuid(), "started 8 threads")
"""


def run(client, code: str) -> str:
    printed, errors = [], []

    def hook(message):
        content = message["content"]
        if message["msg_type"] == "stream":
            printed.append(content["text"])
        elif message["msg_type"] == "error":
            errors.append(f"{content['ename']}: {content['evalue']}")

    client.execute_interactive(code, timeout=60, output_hook=hook)
    assert not errors, errors
    return "".join(printed).strip()


def test_a_kernel_that_holds_every_thread_it_may_does_not_starve_the_next(
    tmp_path, monkeypatch
):
    sandbox.prepare()
    monkeypatch.setenv("DGM_COURSE_ROOT", str(tmp_path))
    kernels = []
    try:
        # the victim is started first: the limit used to be counted from then
        for _ in range(2):
            kernels.append(
                start_new_kernel(kernel_name=sandbox.KERNEL_NAME, cwd=str(tmp_path))
            )
        (_, victim), (_, hostile) = kernels
        held = int(run(hostile, HOLD_EVERY_THREAD))
        assert held >= 2 * sandbox.PROCESSES, "the hostile kernel reached its own limit"
        uid, said = run(victim, START_THREADS).split(" ", 1)
        assert said == "started 8 threads"
        assert (
            int(uid) != int(run(hostile, "import os; print(os.getuid())")) != os.getuid()
        )
    finally:
        for manager, client in kernels:
            client.stop_channels()
            manager.shutdown_kernel(now=True)
