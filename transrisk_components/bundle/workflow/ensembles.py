"""Which ensembles of the candidates safe transfer scores (``safe#ensembles``), beside the candidates themselves.

From the candidates' validation scores (:func:`~transrisk_components.bundle.workflow.selection.choose_candidate`):
``ensemble_top2``, the softmax mean of the two best candidates (with three candidates or more), and
``ensemble_all``, of every candidate that finished. Each is one network
(:class:`~transrisk_components.bundle.engine.ensemble.SoftmaxEnsemble`) scored on the same validation cases by the
same rule; listed after the candidates, an ensemble is kept only when it beats every single candidate by more than
the tie margin, since it costs one forward pass per member.
"""

from __future__ import annotations

from transrisk_components.bundle.workflow.selection import Selection

__all__ = ["ENSEMBLE_PREFIX", "ensemble_candidates"]

#: The names of ensembles begin so; a candidate may not (with ``safe#ensembles true``).
ENSEMBLE_PREFIX = "ensemble_"


def ensemble_candidates(selection: Selection) -> dict[str, tuple[str, ...]]:
    """Ensemble name -> its members, best first, from the rule's scores of the single candidates (a NaN score last;
    equal scores in candidate order); none with fewer than two candidates."""
    ranked = sorted(selection.candidates, key=lambda c: -c.score if c.score == c.score else float("inf"))
    names = tuple(c.name for c in ranked)
    ensembles = {}
    if len(names) >= 3:
        ensembles[f"{ENSEMBLE_PREFIX}top2"] = names[:2]
    if len(names) >= 2:
        ensembles[f"{ENSEMBLE_PREFIX}all"] = names
    return ensembles
