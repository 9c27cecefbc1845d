"""The error a dataset reader raises when its folder does not hold the challenge's layout."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DatasetLayoutError"]


class DatasetLayoutError(FileNotFoundError):
    """Files missing or misnamed in a dataset folder: every problem, and the cases that are complete.

    Args:
        message: every problem, one line each.
        problems: the problems, one per case or misnamed folder (for callers that merge several reads).
        cases: the complete cases the reader found beside them (datalist entries).
    """

    def __init__(self, message: str, problems: Sequence[str], cases: Sequence[dict]) -> None:
        super().__init__(message)
        self.problems = list(problems)
        self.cases = list(cases)
