"""Move the champion alias back to the version it replaced: ``python -m training.rollback`` (``make rollback``).

Every promotion (training/registry.py) tags the new champion with ``previous_<alias>``, the version the alias
named before. A rollback moves the alias to that version and changes no tag, so rolling back again walks
further back (3, then 2, then 1) and stops at the first champion, which replaced nothing. The workers follow
the alias within MODEL_POLL_SECONDS, or at once after ``make reload``.
"""

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from shared.settings import get_settings
from training.registry import get_champion, previous_tag

_NOT_FOUND = ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


class RollbackError(RuntimeError):
    """There is nothing to roll back to; the alias is left where it was."""


@dataclass(frozen=True)
class Rollback:
    """One move of the alias back to the version its champion replaced."""

    name: str
    alias: str
    from_version: str
    to_version: str

    def describe(self) -> str:
        """Return the one line the CLI prints."""
        return (f"{self.name}@{self.alias} moved back from version {self.from_version} to {self.to_version}; "
                f"the workers follow within MODEL_POLL_SECONDS (make reload: at once)")


def roll_back(client: MlflowClient, name: str, alias: str) -> Rollback:
    """Point the alias at the version its champion replaced; raise RollbackError when there is none."""
    champion = get_champion(client, name, alias)
    if champion is None:
        raise RollbackError(f"{name}@{alias} does not exist; there is nothing to roll back")
    current = str(champion.version)
    previous = champion.tags.get(previous_tag(alias))
    if not previous:
        raise RollbackError(f"{name}@{alias} is version {current}, which replaced no earlier version")
    try:
        client.get_model_version(name, previous)
    except MlflowException as exc:
        if exc.error_code != _NOT_FOUND:
            raise
        raise RollbackError(f"version {previous}, which version {current} replaced, no longer exists") from None
    client.set_registered_model_alias(name, alias, previous)
    return Rollback(name=name, alias=alias, from_version=current, to_version=previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rollback CLI and return the process exit code."""
    argparse.ArgumentParser(
        prog="python -m training.rollback",
        description="Move the champion alias back to the version it replaced when it was promoted.",
    ).parse_args(argv)
    settings = get_settings()
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    try:
        outcome = roll_back(client, settings.iris_model_name, settings.iris_model_alias)
    except RollbackError as exc:
        print(f"rollback: {exc}", file=sys.stderr)
        return 1
    print(outcome.describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
