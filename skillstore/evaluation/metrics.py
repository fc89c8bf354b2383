"""Continual-learning metrics over an accuracy matrix (Lopez-Paz 2017; Chaudhry 2018)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..errors import EvaluationError

Matrix = Sequence[Sequence[float | None]]


def check_matrix(matrix: Matrix) -> list[list[float | None]]:
    """A square T x T matrix: R[i][j] is the score on skill j after stage i.

    Entries above the diagonal (skills not learned yet) may be None: a pipeline that evaluates
    each new state on the skills it has learned never measures them. The diagonal and the last
    row are required, since every metric here reads them.
    """
    rows = [[None if v is None else float(v) for v in row] for row in matrix]
    size = len(rows)
    if size == 0:
        raise EvaluationError("Accuracy matrix is empty; evaluate at least one stage on one skill.")
    for i, row in enumerate(rows):
        if len(row) != size:
            raise EvaluationError(
                f"Accuracy matrix row {i} has {len(row)} scores, expected {size} "
                "(one per skill, one row per learning stage)."
            )
        if any(v is not None and not math.isfinite(v) for v in row):
            raise EvaluationError(f"Accuracy matrix row {i} holds a non-finite score; "
                                  "re-run that stage's evaluation.")
        missing = [j for j, v in enumerate(row) if v is None and (j <= i or i == size - 1)]
        if missing:
            raise EvaluationError(
                f"Accuracy matrix lacks the score of skill {missing[0]} after stage {i}; "
                "evaluate every learned skill at every stage."
            )
    return rows


def average_accuracy(matrix: Matrix) -> float:
    """ACC = (1/T) sum_j R[T-1][j]: the mean score on every skill after the last stage."""
    rows = check_matrix(matrix)
    return sum(rows[-1]) / len(rows)


def backward_transfer(matrix: Matrix) -> float | None:
    """BWT = 1/(T-1) sum_{j<T-1} (R[T-1][j] - R[j][j]); negative means forgetting.
    None when T == 1."""
    rows = check_matrix(matrix)
    last = len(rows) - 1
    if last == 0:
        return None
    return sum(rows[last][j] - rows[j][j] for j in range(last)) / last


def forgetting(matrix: Matrix) -> float | None:
    """F = 1/(T-1) sum_{j<T-1} (max_{l<T-1} R[l][j] - R[T-1][j]); Chaudhry's maximum form.

    The max runs over the stages where skill j was measured. None when T == 1."""
    rows = check_matrix(matrix)
    last = len(rows) - 1
    if last == 0:
        return None
    return sum(max(rows[s][j] for s in range(last) if rows[s][j] is not None) - rows[last][j]
               for j in range(last)) / last


def forward_transfer(matrix: Matrix, base_scores: Sequence[float]) -> float | None:
    """FWT = 1/(T-1) sum_{j>=1} (R[j-1][j] - b[j]); b is the base model's score per skill.

    None when T == 1 or when the scores just before learning were not measured."""
    rows = check_matrix(matrix)
    if len(base_scores) != len(rows):
        raise EvaluationError(
            f"Base scores list {len(base_scores)} skills but the accuracy matrix has {len(rows)}; "
            "evaluate the base on every skill."
        )
    if len(rows) == 1 or any(rows[j - 1][j] is None for j in range(1, len(rows))):
        return None  # a skill's score just before it was learned was never measured
    return (sum(rows[j - 1][j] - float(base_scores[j]) for j in range(1, len(rows)))
            / (len(rows) - 1))


@dataclass(frozen=True)
class ContinualMetrics:
    """The metrics of one learning run, as shown in reports."""

    average_accuracy: float
    bwt: float | None
    forgetting: float | None
    forward_transfer: float | None

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def continual_metrics(matrix: Matrix,
                      base_scores: Sequence[float] | None = None) -> ContinualMetrics:
    """Every metric at once; forward transfer only when the base's scores are known."""
    return ContinualMetrics(
        average_accuracy=average_accuracy(matrix),
        bwt=backward_transfer(matrix),
        forgetting=forgetting(matrix),
        forward_transfer=None if base_scores is None else forward_transfer(matrix, base_scores),
    )
