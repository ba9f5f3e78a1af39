"""Promotions record the champion they replace, and a rollback walks back along that record (fake registry)."""

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

import training.rollback
from training.registry import previous_tag, promote, promote_if_better
from training.rollback import Rollback, RollbackError, main, roll_back

NAME, ALIAS = "iris-classifier", "champion"


@dataclass
class FakeVersion:
    version: str
    tags: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None  # no run: the gate reads the F1 from the version tag


class FakeClient:
    """The MlflowClient calls the gate and the rollback make, on one registered model held in memory."""

    def __init__(self, versions: int = 0, f1: float = 0.9) -> None:
        self.versions = {str(v): FakeVersion(str(v), {"holdout_macro_f1": str(f1)}) for v in range(1, versions + 1)}
        self.aliases: dict[str, str] = {}

    def _missing(self) -> MlflowException:
        return MlflowException("not found", error_code=RESOURCE_DOES_NOT_EXIST)

    def get_registered_model(self, name: str) -> Any:
        if not self.versions:
            raise self._missing()
        return SimpleNamespace(aliases=dict(self.aliases))

    def get_model_version(self, name: str, version: str) -> FakeVersion:
        if str(version) not in self.versions:
            raise self._missing()
        return self.versions[str(version)]

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.versions[str(version)].tags[key] = value

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self.aliases[alias] = str(version)


def promoted_in_turn(count: int) -> FakeClient:
    """Return a registry where versions 1..count were promoted one after another."""
    client = FakeClient(count)
    for version in range(1, count + 1):
        assert promote_if_better(client, NAME, ALIAS, version, candidate_f1=0.9).promoted
    return client


def test_a_promotion_tags_the_new_champion_with_the_one_it_replaced() -> None:
    client = promoted_in_turn(3)
    assert client.aliases[ALIAS] == "3"
    assert previous_tag(ALIAS) == "previous_champion"
    assert [client.versions[v].tags.get("previous_champion") for v in ("1", "2", "3")] == [None, "1", "2"]


def test_promote_by_hand_records_the_replaced_champion_too_but_never_itself() -> None:
    client = promoted_in_turn(2)
    promote(client, NAME, ALIAS, "1")
    assert client.versions["1"].tags["previous_champion"] == "2"
    promote(client, NAME, ALIAS, "1")
    assert client.versions["1"].tags["previous_champion"] == "2"


def test_a_worse_candidate_left_out_by_the_gate_records_nothing() -> None:
    client = promoted_in_turn(1)
    client.versions["2"] = FakeVersion("2")
    assert not promote_if_better(client, NAME, ALIAS, "2", candidate_f1=0.5).promoted
    assert "previous_champion" not in client.versions["2"].tags and client.aliases[ALIAS] == "1"


def test_rollbacks_walk_back_the_promotions_and_stop_at_the_first_champion() -> None:
    client = promoted_in_turn(3)
    assert roll_back(client, NAME, ALIAS) == Rollback(NAME, ALIAS, "3", "2")
    assert roll_back(client, NAME, ALIAS) == Rollback(NAME, ALIAS, "2", "1")
    with pytest.raises(RollbackError, match="version 1, which replaced no earlier version"):
        roll_back(client, NAME, ALIAS)
    assert client.aliases[ALIAS] == "1"


def test_a_promotion_after_a_rollback_replaces_the_rolled_back_to_version() -> None:
    client = promoted_in_turn(3)
    roll_back(client, NAME, ALIAS)
    client.versions["4"] = FakeVersion("4")
    promote_if_better(client, NAME, ALIAS, "4", candidate_f1=0.95)
    assert roll_back(client, NAME, ALIAS) == Rollback(NAME, ALIAS, "4", "2")


def test_no_champion_or_a_deleted_previous_version_leaves_the_alias_alone() -> None:
    with pytest.raises(RollbackError, match="does not exist"):
        roll_back(FakeClient(), NAME, ALIAS)
    client = promoted_in_turn(2)
    del client.versions["1"]
    with pytest.raises(RollbackError, match="version 1, which version 2 replaced, no longer exists"):
        roll_back(client, NAME, ALIAS)
    assert client.aliases[ALIAS] == "2"


def test_the_cli_prints_one_line_and_exits_non_zero_when_there_is_nothing_to_roll_back(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client = promoted_in_turn(2)
    monkeypatch.setattr(training.rollback, "MlflowClient", lambda tracking_uri: client)
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out == f"{NAME}@{ALIAS} moved back from version 2 to 1; the workers follow within MODEL_POLL_SECONDS " \
                  "(make reload: at once)\n"
    assert main([]) == 1
    assert capsys.readouterr().err == f"rollback: {NAME}@{ALIAS} is version 1, which replaced no earlier version\n"
