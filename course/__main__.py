"""The builder's and instructor's commands, run from the course root as ``python -m
course``.

    book                  build the book into _build/html (pages executed; cache reset
                          when lib/ changes)
    release               solutions/<a>/<a>.ipynb -> notebooks/<a>/<a>.ipynb (nbgrader
                          generate_assignment)
    autograde [a] [--jobs N] [--force] [--shard i/n]
                          grade every new or changed submitted/<student>/<a>/
                          (course.autograde); print a summary table. --shard i/n (i from
                          0 to n-1): only the submissions of shard i of n, for graders
                          on several machines
    feedback [a]          feedback/<student>/<a>/<a>.html for every graded submission
    grades                grades.csv (nbgrader export)
    validate NB           for students: run the notebook NB in the grading kernel, as
                          the grader will, and say which visible self-checks pass
                          (course.validate)

The gradebook is ``DB_URL`` from the environment (for example
``postgresql://grader:PASSWORD@db/dgm``; nbgrader_config.py reads the same), else the
course's SQLite ``gradebook.db``.

The Makefile wraps each one (``make book``, ``make release`` ...). Grading is in
`course.autograde`:
each submission in its own nbgrader process and resource-limited kernel, so a broken or
hostile submission costs only its own score: it gets 0 and a message in the summary, and
the others are graded as usual.
"""

import argparse
import sys
from pathlib import Path

from course.autograde import autograde, parse_shard, summary
from course.book import build_book
from course.publish import feedback, grades, release


def main(argv: list[str]) -> int:
    root = Path.cwd()
    parser = argparse.ArgumentParser(
        prog="python -m course",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command",
        choices=[
            "book",
            "release",
            "autograde",
            "feedback",
            "grades",
            "validate",
            "help",
        ],
    )
    parser.add_argument(
        "assignment",
        nargs="?",
        default=None,
        help="limit autograde/feedback to one assignment; validate: the notebook",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="autograde: submissions graded at once"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="autograde: regrade unchanged submissions too",
    )
    parser.add_argument(
        "--shard",
        type=parse_shard,
        default=None,
        metavar="i/n",
        help="autograde: only shard i of n (i from 0 to n-1, as JOB_COMPLETION_INDEX)",
    )
    args = parser.parse_args(argv or ["help"])
    only = args.assignment or None
    if args.command == "book":
        return build_book(root)
    if args.command == "release":
        return release(root)
    if args.command == "autograde":
        print(
            summary(
                autograde(root, only, jobs=args.jobs, force=args.force, shard=args.shard)
            )
        )
        return 0
    if args.command == "feedback":
        return feedback(root, only)
    if args.command == "grades":
        return grades(root)
    if args.command == "validate":
        if not args.assignment:
            print("usage: python -m course validate notebooks/04-vae/04-vae.ipynb")
            return 2
        from course.validate import main as validate

        return validate(args.assignment)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
