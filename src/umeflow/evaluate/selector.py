"""A practical, label-free choice between the disc and gen embedding of each query.

UME-R1 reports an *oracle* (per query, the better of disc and gen) that needs the ground truth, so it is an upper
bound. A deployable system must decide without labels. This selector compares how *decisively* each mode ranks:

    confidence(mode) = (s₁ − s₂) / (std(s) + ε)

over that mode's similarity scores ``s`` to the query's candidates (its own list for local tasks, the pool for global
ones), i.e. the top-1 margin in units of the score spread, so it is comparable across modes whose similarity scales
differ. When both modes agree on the top-1 candidate the choice does not matter; otherwise the more decisive mode
wins. ``gap_closed`` reports how much of the oracle's advantage over the better single mode the selector recovers.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-6


def confidence(scores: np.ndarray) -> float:
    """Top-1 margin over the spread of one query's candidate scores (0 for fewer than 2 candidates)."""
    if scores.size < 2:
        return 0.0
    top2 = np.partition(scores, -2)[-2:]
    return float((top2.max() - top2.min()) / (scores.std() + EPS))


def choose(conf_disc: np.ndarray, conf_gen: np.ndarray) -> np.ndarray:
    """True where gen is chosen. Ties go to disc: it is the cheaper mode at inference."""
    return np.asarray(conf_gen) > np.asarray(conf_disc)


def choose_cross(disc_scores: list[np.ndarray], gen_scores: list[np.ndarray]) -> np.ndarray:
    """Cross-check variant: when the two modes' top-1 candidates differ, ask each mode how plausible the *other*
    mode's pick is (its z-score among that mode's candidate scores) and follow the pick the other mode finds more
    plausible. True where gen is chosen; agreement or ties go to disc."""
    pick = np.zeros(len(disc_scores), dtype=bool)
    for i, (sd, sg) in enumerate(zip(disc_scores, gen_scores)):
        d1, g1 = int(np.argmax(sd)), int(np.argmax(sg))
        if d1 == g1 or sd.size < 2:
            continue
        z_gen_of_disc_pick = (sg[d1] - sg.mean()) / (sg.std() + EPS)
        z_disc_of_gen_pick = (sd[g1] - sd.mean()) / (sd.std() + EPS)
        pick[i] = z_disc_of_gen_pick > z_gen_of_disc_pick
    return pick


def gap_closed(selector: float | None, disc: float | None, gen: float | None, oracle: float | None) -> float | None:
    """(selector − best single mode) / (oracle − best single mode); None when the oracle has no advantage."""
    if None in (selector, disc, gen, oracle):
        return None
    best = max(disc, gen)
    if oracle - best <= 1e-12:
        return None
    return (selector - best) / (oracle - best)
