"""Errors raised by polypal. Each names the offending file or input and the problem."""


class PolypalError(Exception):
    """Base class for every error polypal raises on purpose."""


class DataError(PolypalError, ValueError):
    """An input file (image or mask) cannot be used. The message names the file."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class EmptyPoolError(PolypalError, ValueError):
    """A selection was asked for but no unlabeled item is left."""
