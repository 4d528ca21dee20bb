"""The error of explanations asked for in a way that cannot be computed."""


class ExplanationError(ValueError):
    """An explanation that cannot be computed as asked; the message says what to change."""
