"""Open-loop summaries: true-label accuracy and agreement with the base model, of all and of reconstructed
answers; the base model's own classes computed in process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from helpers import random_images, reference_logits

from coded_invnet.client import Prediction
from coded_invnet.tools.base_model import BATCH, base_predictions
from coded_invnet.tools.openloop import Outcome, run_open_loop, summarize


def answer(predicted: int, label: int, base: int, reconstructed: bool = False) -> Outcome:
    return Outcome(0.0, 1.0, "OK", predicted, reconstructed, label, base)


def test_summary_reports_true_label_accuracy_and_agreement_with_the_base_model() -> None:
    outcomes = [
        answer(3, label=3, base=3),  # right, agrees
        answer(5, label=3, base=5),  # wrong, but what the base model says
        answer(1, label=1, base=1, reconstructed=True),  # right, agrees
        answer(2, label=2, base=7, reconstructed=True),  # right, yet the base model says otherwise
        answer(4, label=9, base=9, reconstructed=True),  # wrong, disagrees
        Outcome(0.0, 0.0, "UNAVAILABLE", -1, False, 0, 0),  # lost: in neither figure
    ]
    summary = summarize(outcomes, duration_s=1.0)
    assert (summary["answered"], summary["lost"], summary["reconstructed"]) == (5, 1, 3)
    assert summary["accuracy"] == 0.6 and summary["reconstructed_accuracy"] == round(2 / 3, 4)
    assert summary["agreement"] == 0.6 and summary["reconstructed_agreement"] == round(1 / 3, 4)


def test_agreement_is_none_where_the_base_is_unknown_or_nothing_was_answered() -> None:
    unknown = summarize([answer(3, label=3, base=-1), answer(1, label=1, base=1)], duration_s=1.0)
    assert unknown["accuracy"] == 1.0 and unknown["agreement"] is None
    assert unknown["reconstructed_accuracy"] is None and unknown["reconstructed_agreement"] is None
    no_rebuilt = summarize([answer(3, label=3, base=3)], duration_s=1.0)
    assert no_rebuilt["agreement"] == 1.0 and no_rebuilt["reconstructed_agreement"] is None
    nothing = summarize([], duration_s=1.0)
    assert nothing["agreement"] is None and nothing["accuracy"] is None


def test_open_loop_gives_each_request_its_images_base_class_and_unknown_past_the_array() -> None:
    images = np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1)  # image i holds the value i

    async def echo(image: np.ndarray, timeout_s: float) -> Prediction:
        """Answers the class the image holds: a classifier whose answers the test knows."""
        value = int(image.item())
        return Prediction(value, np.zeros(4), np.zeros(4), False, "none", 0.0)

    labels = np.array([0, 1, 2, 3])
    schedule = np.zeros(6)  # requests 4 and 5 send images 0 and 1 again
    outcomes = asyncio.run(run_open_loop(echo, images, labels, schedule, 1.0, np.array([0, 1, 0])))
    assert [o.base for o in outcomes] == [0, 1, 0, -1, 0, 1]  # image 3 is beyond the base array
    assert summarize(outcomes, 1.0)["agreement"] is None  # one answer's base is unknown
    without = asyncio.run(run_open_loop(echo, images, labels, schedule[:4], 1.0, np.array([0, 1, 0, 3])))
    assert summarize(without, 1.0)["agreement"] == 0.75 and summarize(without, 1.0)["accuracy"] == 1.0
    assert {o.base for o in asyncio.run(run_open_loop(echo, images, labels, schedule, 1.0))} == {-1}


def test_base_predictions_are_the_worker_models_classes_for_the_images_the_load_uses(model_dir: Path) -> None:
    images = random_images(BATCH * 2 + 1)  # three runs, the last of one image
    expected = reference_logits(model_dir, images).argmax(axis=1)
    np.testing.assert_array_equal(base_predictions(model_dir, images), expected)
    np.testing.assert_array_equal(base_predictions(model_dir, images, requests=3), expected[:3])
    assert len(base_predictions(model_dir, images[:5], requests=100)) == 5  # min(images, requests)
