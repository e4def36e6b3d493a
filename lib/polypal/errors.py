"""Errors raised by polypal. Each names the offending file or input and the problem."""

import re


class PolypalError(Exception):
    """Base class for every error polypal raises on purpose."""


class DataError(PolypalError, ValueError):
    """An input file (image or mask) cannot be used. The message names the file."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        # ``problem`` alone is what a server answers a client: a reader's own message can hold the
        # (server-side, temporary) path, which is not the client's business. Whole occurrences only: a path
        # "x" must not turn "exist" into "e<file>ist"
        self.problem = re.sub(r"(?<![\w.])" + re.escape(self.path) + r"(?![\w])", lambda m: "<file>", problem) \
            if self.path else problem
        super().__init__(f"{self.path}: {self.problem}")


class EmptyPoolError(PolypalError, ValueError):
    """A selection was asked for but no unlabeled item is left."""
