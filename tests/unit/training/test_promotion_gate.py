"""Check the promotion gate and the line the CLI prints, without touching MLflow."""

import pytest

from training.registry import PromotionOutcome, should_promote


def test_promotes_when_there_is_no_champion() -> None:
    assert should_promote(0.5, None)


def test_promotes_on_a_tie() -> None:
    assert should_promote(0.9667, 0.9667)


def test_promotes_a_better_candidate() -> None:
    assert should_promote(0.97, 0.93)


def test_keeps_the_champion_against_a_worse_candidate() -> None:
    assert not should_promote(0.93, 0.97)


def test_force_promotes_a_worse_candidate() -> None:
    assert should_promote(0.93, 0.97, force=True)


def _outcome(**overrides: object) -> PromotionOutcome:
    fields: dict = {
        "name": "iris-classifier",
        "alias": "champion",
        "version": "3",
        "candidate_f1": 0.9667,
        "champion_version": "2",
        "champion_f1": 0.9333,
        "promoted": True,
        "forced": False,
    }
    fields.update(overrides)
    return PromotionOutcome(**fields)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"champion_version": None, "champion_f1": None},
            "registered iris-classifier version 3 (holdout macro-F1 0.9667); "
            "no champion yet, iris-classifier@champion now points to version 3",
        ),
        (
            {},
            "registered iris-classifier version 3 (holdout macro-F1 0.9667); "
            "champion moved from version 2 (0.9333) to 3",
        ),
        (
            {"candidate_f1": 0.9333, "champion_f1": 0.9667, "promoted": False},
            "registered iris-classifier version 3 (holdout macro-F1 0.9333); "
            "champion stays at version 2 (0.9667 > 0.9333); use --force to override",
        ),
        (
            {"candidate_f1": 0.9333, "champion_f1": 0.9667, "forced": True},
            "registered iris-classifier version 3 (holdout macro-F1 0.9333); "
            "champion moved from version 2 (0.9667) to 3 (forced)",
        ),
        (
            {"forced": True},
            "registered iris-classifier version 3 (holdout macro-F1 0.9667); "
            "champion moved from version 2 (0.9333) to 3",
        ),
        (
            {"champion_f1": None},
            "registered iris-classifier version 3 (holdout macro-F1 0.9667); "
            "champion moved from version 2 (no recorded F1) to 3",
        ),
    ],
)
def test_describe_prints_one_line_per_decision(overrides: dict, expected: str) -> None:
    line = _outcome(**overrides).describe()
    assert line == expected
    assert "\n" not in line
