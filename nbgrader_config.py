"""nbgrader settings for this course (read by every `make release/autograde/feedback/grades`)."""
c = get_config()  # noqa: F821 (provided by nbgrader)

c.CourseDirectory.course_id = "dgm"
# Instructor sources live in solutions/, student versions in notebooks/ (committed).
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
c.CourseDirectory.db_url = "sqlite:///gradebook.db"

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Per-cell timeout while autograding (seconds); the whole-notebook limit is
# lib.course.WHOLE_NOTEBOOK_LIMIT_S.
c.Execute.timeout = 120
c.Execute.interrupt_on_timeout = True

# Feedback returned to students never shows hidden tests (nor tracebacks quoting them).
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "lib.course.RedactHiddenTests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
