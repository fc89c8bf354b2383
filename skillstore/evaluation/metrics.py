"""Continual-learning metrics over an accuracy matrix (Lopez-Paz 2017; Chaudhry 2018)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..errors import EvaluationError

Matrix = Sequence[Sequence[float | None]]


def check_attempts(matrix: Matrix) -> list[list[float | None]]:
    """A square, finite T x T matrix whose cells may all be None (check_matrix's shape rules)."""
    rows = [[None if v is None else float(v) for v in row] for row in matrix]
    for i, row in enumerate(rows):
        if len(row) != len(rows):
            raise EvaluationError(
                f"Accuracy matrix row {i} has {len(row)} scores, expected {len(rows)} "
                "(one per skill, one row per learning stage).")
        if any(v is not None and not math.isfinite(v) for v in row):
            raise EvaluationError(f"Accuracy matrix row {i} holds a non-finite score; "
                                  "re-run that stage's evaluation.")
    return rows


def check_matrix(matrix: Matrix) -> list[list[float | None]]:
    """A square T x T matrix: R[i][j] is the score on skill j after stage i.

    Entries above the diagonal (skills not learned yet) may be None: a pipeline that evaluates
    each new state on the skills it has learned never measures them. The diagonal and the last
    row are required, since every metric here reads them.
    """
    rows = check_attempts(matrix)
    size = len(rows)
    if size == 0:
        raise EvaluationError("Accuracy matrix is empty; evaluate at least one stage on one skill.")
    for i, row in enumerate(rows):
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
    """F = 1/(T-1) sum_{j<T-1} (max_{j<=l<T-1} R[l][j] - R[T-1][j]); Chaudhry's maximum form.

    The max runs over the stages at or after the one that learned skill j and before the last
    (Chaudhry et al. 2018, eq. 7-8): a score measured before j was learned is no knowledge
    that could be forgotten. None when T == 1."""
    rows = check_matrix(matrix)
    last = len(rows) - 1
    if last == 0:
        return None
    return sum(max(rows[stage][j] for stage in range(j, last)) - rows[last][j]
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
    """The metrics of one learning run, as shown in reports.

    ``average_accuracy`` is over every attempted skill (None while the final state's score on
    one of them was never measured); ``learned_average_accuracy`` over the learned ones only;
    BWT, forgetting and FWT over the learned ones only (see continual_metrics).
    """

    average_accuracy: float | None
    bwt: float | None
    forgetting: float | None
    forward_transfer: float | None
    learned_average_accuracy: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def continual_metrics(matrix: Matrix, base_scores: Sequence[float | None] | None = None, *,
                      learned: Sequence[bool] | None = None) -> ContinualMetrics:
    """Every metric at once; forward transfer only when the base's scores are known.

    ``learned[j]`` False marks a skill that was attempted at stage j but not learned (its pack
    was rejected or the decision inconclusive: row j is the state that stayed). Such a column
    counts in ``average_accuracy``, the final state's mean score over every attempted skill,
    which is what a baseline that learns every skill is compared on; BWT, forgetting and FWT
    are over the learned skills only (the matrix of learned stages and skills), since a skill
    never learned has no score after learning to fall back from. Without ``learned`` every
    skill was learned and every cell of the diagonal and the last row is required.
    """
    if learned is None:
        rows = check_matrix(matrix)
        acc = average_accuracy(rows)
        return ContinualMetrics(
            average_accuracy=acc, bwt=backward_transfer(rows), forgetting=forgetting(rows),
            forward_transfer=(None if base_scores is None
                              else forward_transfer(rows, base_scores)),
            learned_average_accuracy=acc)
    rows = check_attempts(matrix)
    if len(learned) != len(rows):
        raise EvaluationError(f"{len(learned)} learned flags for an accuracy matrix of "
                              f"{len(rows)} skills; give one per skill.")
    if base_scores is not None and len(base_scores) != len(rows):
        raise EvaluationError(
            f"Base scores list {len(base_scores)} skills but the accuracy matrix has {len(rows)}; "
            "evaluate the base on every skill.")
    last = rows[-1] if rows else []
    acc = (None if not last or any(v is None for v in last) else sum(last) / len(last))
    keep = [j for j, flag in enumerate(learned) if flag]
    if not keep:
        return ContinualMetrics(acc, None, None, None, None)
    sub = [[rows[i][j] for j in keep] for i in keep]
    base = None if base_scores is None else [base_scores[j] for j in keep]
    if base is not None and any(v is None for v in base):
        base = None  # FWT needs the base's score on every learned skill
    m = continual_metrics(sub, base)
    return ContinualMetrics(acc, m.bwt, m.forgetting, m.forward_transfer, m.average_accuracy)
