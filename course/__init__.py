"""The instructor's tooling: the book build, release, autograde, feedback and grades.

    python -m course book | release | autograde [a] [--jobs N] [--force] | feedback [a]
    | grades

- `course.autograde`: a whole class, each submission in its own nbgrader process;
- `course.grader`: one notebook, the student's cells in their kernel, the test cells here;
- `course.sandbox`: the kernel students' code runs in (limits, and as root an unprivileged
  user in namespaces of its own).

Needs the ``[course]`` extra (nbgrader, nbclient, Jupyter Book). ``lib`` never imports
it: it is the science the book and the exercises use, and `lib.grading` is the half of
grading that runs in a student's kernel.
"""
