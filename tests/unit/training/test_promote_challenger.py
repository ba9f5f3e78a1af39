"""promote-challenger moves @champion to @challenger only with enough shadowed rows that agree (fake registry)."""

import pytest

import training.promote_challenger as module
from shared.settings import Settings
from tests.unit.training.test_rollback import FakeClient, promoted_in_turn
from training.promote_challenger import (
    Agreement,
    PromotionRefused,
    main,
    promote_challenger,
    read_agreement,
    refusal,
)
from training.rollback import roll_back

SETTINGS = Settings(key_prefix="t:")


class RegistryWithAliases(FakeClient):
    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        del self.aliases[alias]


class FakeStats:
    """The results Redis as the tool reads it: a pipeline of HGETs on the hashes the workers write."""

    def __init__(self, hashes: dict[str, dict[str, str]] | None = None) -> None:
        self.hashes = hashes or {}
        self._queued: list[tuple[str, str]] = []

    def pipeline(self) -> "FakeStats":
        return self

    def __enter__(self) -> "FakeStats":
        return self

    def __exit__(self, *_: object) -> None:
        self._queued = []

    def hget(self, key: str, field: str) -> "FakeStats":
        self._queued.append((key, field))
        return self

    def execute(self) -> list[str | None]:
        return [self.hashes.get(key, {}).get(field) for key, field in self._queued]


def shadowed(rows: int, agreed: int, champion: str = "1", challenger: str = "2") -> FakeStats:
    return FakeStats({SETTINGS.shadow_stats_key(champion, challenger): {"rows": str(rows), "agree": str(agreed)}})


def registry_with_challenger() -> RegistryWithAliases:
    client = RegistryWithAliases(2)
    client.aliases = {"champion": "1", "challenger": "2"}
    return client


@pytest.mark.parametrize(("rows", "agreed", "reason"), [
    (0, 0, "only 0 rows shadowed, fewer than the 100 required"),
    (99, 99, "only 99 rows shadowed"),
    (100, 94, "agreed with the champion on 94.00% of 100 rows, below the 95.00% required"),
])
def test_too_few_rows_or_too_little_agreement_refuses(rows: int, agreed: int, reason: str) -> None:
    found = refusal(Agreement(rows, agreed), min_rows=100, min_agreement=0.95)
    assert found is not None and reason in found


def test_enough_rows_that_agree_enough_allow_it_at_the_threshold_exactly() -> None:
    assert refusal(Agreement(100, 95), min_rows=100, min_agreement=0.95) is None
    assert refusal(Agreement(1000, 1000), min_rows=1000, min_agreement=1.0) is None


def test_the_agreement_is_read_from_the_pairs_hash_and_is_zero_when_none_was_written() -> None:
    assert read_agreement(shadowed(40, 39), SETTINGS, "1", "2") == Agreement(40, 39)
    assert read_agreement(shadowed(40, 39), SETTINGS, "1", "3") == Agreement(0, 0)  # another pair's rows never count
    assert Agreement(0, 0).share == 0.0


def test_a_challenger_that_agrees_becomes_champion_its_alias_goes_and_rollback_undoes_it() -> None:
    client = registry_with_challenger()
    outcome = promote_challenger(client, shadowed(200, 199), SETTINGS, min_rows=100, min_agreement=0.95)
    assert client.aliases == {"champion": "2"}
    assert client.versions["2"].tags["previous_champion"] == "1"  # what make rollback moves back to
    assert outcome.describe().startswith("iris-classifier@champion moved from version 1 to 2, which agreed on "
                                         "99.50% of 200 shadowed rows; @challenger removed;")
    assert roll_back(client, "iris-classifier", "champion").to_version == "1"


@pytest.mark.parametrize(("aliases", "stats", "message"), [
    ({"champion": "1"}, shadowed(500, 500), "iris-classifier@challenger does not exist"),
    ({"champion": "2", "challenger": "2"}, shadowed(500, 500, "2", "2"), "which is the champion already"),
    ({"champion": "1", "challenger": "2"}, shadowed(50, 50), "only 50 rows shadowed"),
    ({"champion": "1", "challenger": "2"}, shadowed(500, 400), "agreed with the champion on 80.00% of 500 rows"),
    # Rows shadowed against another champion do not count for this one.
    ({"champion": "1", "challenger": "2"}, shadowed(500, 500, champion="3"), "only 0 rows shadowed"),
])
def test_every_refusal_leaves_the_aliases_where_they_were(aliases: dict[str, str], stats: FakeStats,
                                                          message: str) -> None:
    client = RegistryWithAliases(3)
    client.aliases = dict(aliases)
    with pytest.raises(PromotionRefused, match=message):
        promote_challenger(client, stats, SETTINGS, min_rows=100, min_agreement=0.95)
    assert client.aliases == aliases
    assert "previous_champion" not in client.versions["2"].tags


def test_the_cli_refuses_with_one_line_and_status_1(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    client = promoted_in_turn(1)
    monkeypatch.setattr(module, "MlflowClient", lambda tracking_uri: client)
    monkeypatch.setattr(module.redis.Redis, "from_url", lambda *args, **kwargs: FakeStatsClosing())
    assert main(["--min-rows", "10"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == ("promote-challenger: iris-classifier@challenger does not exist; there is no "
                                 "challenger to promote\n")


def test_the_cli_refuses_a_share_outside_0_to_1() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--min-agreement", "95"])
    assert exited.value.code == 2


class FakeStatsClosing(FakeStats):
    def close(self) -> None:
        pass

