"""Errors of a run that the entry points report as one line (no traceback)."""


class PipelineError(RuntimeError):
    """A run that cannot proceed (e.g. class counts disagree); the message says the fix."""
