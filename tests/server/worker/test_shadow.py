"""The shadow comparison: arg-max agreement for class scores, allclose otherwise, non-finite rows."""

from __future__ import annotations

import numpy as np

from server.config import RolloutConfig
from server.worker.shadow import compare


def test_class_scores_agree_by_arg_max_even_when_scores_move() -> None:
    a = np.array([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6]], dtype=np.float32)
    b = np.array([[0.3, 0.7], [0.6, 0.4], [0.7, 0.3]], dtype=np.float32)  # last row flips
    assert compare({"out": a}, {"out": b}, RolloutConfig()) == (3, 2, 0)


def test_other_outputs_agree_within_tolerance_and_nan_never_agrees() -> None:
    a = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
    b = np.array([[1.00001], [2.5], [np.nan]], dtype=np.float32)
    assert compare({"y": a}, {"y": b}, RolloutConfig()) == (3, 1, 1)


def test_the_comparison_can_be_chosen() -> None:
    a = np.array([[0.1, 0.9]], dtype=np.float32)
    b = np.array([[0.2, 0.8]], dtype=np.float32)
    assert compare({"o": a}, {"o": b}, RolloutConfig(compare="allclose"))[1] == 0
    assert compare({"o": a}, {"o": b}, RolloutConfig(compare="argmax"))[1] == 1
