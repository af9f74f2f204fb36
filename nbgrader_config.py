"""nbgrader settings for this course (read by every `make
release/autograde/feedback/grades`)."""

import os
import sys
from pathlib import Path

# The grader (course/) is the course's own tooling, not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent))

c = get_config()  # noqa: F821 (provided by nbgrader)

c.CourseDirectory.course_id = "dgm"
# Instructor sources live in solutions/, student versions in notebooks/ (committed).
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
# The gradebook: DB_URL from the environment (e.g.
# postgresql://grader:PASSWORD@db.example.org/dgm, for graders on several machines;
# README "Larger classes"), else SQLite in the course folder.
c.CourseDirectory.db_url = os.environ.get("DB_URL") or "sqlite:///gradebook.db"

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Autograding runs students' code: see course/grader.py, course/autograde.py,
# course/sandbox.py. The test cells run in nbgrader's process
# (course.grader.GradingExecute), never in the kernel. The resource-limited kernel
# (written into the venv by `make autograde`).
c.Execute.kernel_name = "dgm-grader"
# Per-cell timeout (s): the cell is interrupted, gets an error and scores 0. For a test
# cell (run by the grader) it is the time of all its calls into the student's kernel.
c.Execute.timeout = 120
c.Execute.interrupt_on_timeout = True
# Seconds to wait for a cell's last output after its reply (generous: the machine may be
# busy).
c.Execute.iopub_timeout = 15
# Whole-notebook limit (s): the cells after it are not run and score 0.
c.GradingExecute.notebook_timeout = 600
# A cell that kills the kernel scores 0; the rest run in a fresh kernel.
c.GradingExecute.max_kernel_restarts = 3
# Outputs kept per cell, and characters per output (a flood of prints is cut).
c.GradingExecute.max_outputs = 50
c.GradingExecute.max_output_chars = 10_000
c.LimitOutput.max_lines = 200
c.Autograde.autograde_preprocessors = [
    "course.grader.GradingExecute",
    "nbgrader.preprocessors.IgnorePattern",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "nbgrader.preprocessors.SaveAutoGrades",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]
# Test cells deleted from a submission are put back from the gradebook (edited ones are
# always overwritten), so removing or editing a test earns nothing.
c.OverwriteCells.add_missing_cells = True

# Feedback returned to students never shows hidden tests (nor tracebacks quoting them).
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "course.publish.RedactHiddenTests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
