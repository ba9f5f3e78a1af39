"""Decide whether a newly registered version becomes the champion, and move the alias when it does.

Each move tags the new champion with the version it replaced (``previous_<alias>``), which is what
``python -m training.rollback`` moves the alias back to.
"""

from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

F1_KEY = "holdout_macro_f1"

_NOT_FOUND = ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def should_promote(candidate_f1: float, champion_f1: float | None, force: bool = False) -> bool:
    """Return True when the candidate should take the alias: forced, no comparable champion, or no worse."""
    # Ties promote: with the same data and seed a retrain is the fresher copy of an equal model.
    return force or champion_f1 is None or candidate_f1 >= champion_f1


def get_champion(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """Return the model version the alias points to, or None when the model or the alias does not exist."""
    # Read the alias map rather than calling get_model_version_by_alias: a missing alias comes back as
    # the generic INVALID_PARAMETER_VALUE, which would also swallow real errors.
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == _NOT_FOUND:
            return None
        raise
    version = model.aliases.get(alias)
    if version is None:
        return None
    return client.get_model_version(name, str(version))


def champion_f1(client: MlflowClient, version: ModelVersion) -> float | None:
    """Return the champion's holdout macro-F1 from its run, falling back to the version tag."""
    if version.run_id:
        try:
            metric = client.get_run(version.run_id).data.metrics.get(F1_KEY)
        except MlflowException as exc:
            # A deleted or purged run must not block training; the version tag may still carry the score.
            if exc.error_code != _NOT_FOUND:
                raise
            metric = None
        if metric is not None:
            return float(metric)
    tagged = version.tags.get(F1_KEY)
    return float(tagged) if tagged is not None else None


def previous_tag(alias: str) -> str:
    """Return the version tag that names the version a promotion to ``alias`` replaced: ``previous_champion``."""
    return f"previous_{alias}"


def promote(client: MlflowClient, name: str, alias: str, version: str | int) -> None:
    """Point the alias at the version, recording on it the version it replaces (training/rollback.py's target)."""
    champion = get_champion(client, name, alias)
    _move_alias(client, name, alias, str(version), str(champion.version) if champion is not None else None)


def _move_alias(client: MlflowClient, name: str, alias: str, version: str, replaced: str | None) -> None:
    if replaced is not None and replaced != version:
        # Tag first: the alias never names a champion whose predecessor is unrecorded.
        client.set_model_version_tag(name, version, previous_tag(alias), replaced)
    client.set_registered_model_alias(name, alias, version)


@dataclass(frozen=True)
class PromotionOutcome:
    """What the gate decided for one registered version."""

    name: str
    alias: str
    version: str
    candidate_f1: float
    champion_version: str | None
    champion_f1: float | None
    promoted: bool
    forced: bool

    def describe(self) -> str:
        """Return the one line the CLI prints."""
        head = f"registered {self.name} version {self.version} (holdout macro-F1 {self.candidate_f1:.4f})"
        if self.champion_version is None:
            return f"{head}; no champion yet, {self.name}@{self.alias} now points to version {self.version}"
        old = "no recorded F1" if self.champion_f1 is None else f"{self.champion_f1:.4f}"
        if self.promoted:
            # "forced" only when the gate alone would have kept the champion.
            overrode = self.forced and not should_promote(self.candidate_f1, self.champion_f1)
            suffix = " (forced)" if overrode else ""
            moved = f"champion moved from version {self.champion_version} ({old}) to {self.version}{suffix}"
            return f"{head}; {moved}"
        return (
            f"{head}; champion stays at version {self.champion_version} "
            f"({old} > {self.candidate_f1:.4f}); use --force to override"
        )


def promote_if_better(
    client: MlflowClient,
    name: str,
    alias: str,
    version: str | int,
    candidate_f1: float,
    force: bool = False,
) -> PromotionOutcome:
    """Compare a registered version with the current champion and move the alias if the gate allows."""
    version = str(version)
    champion = get_champion(client, name, alias)
    current_f1 = champion_f1(client, champion) if champion is not None else None
    promoted = should_promote(candidate_f1, current_f1, force)
    if promoted:
        _move_alias(client, name, alias, version, str(champion.version) if champion is not None else None)
    return PromotionOutcome(
        name=name,
        alias=alias,
        version=version,
        candidate_f1=candidate_f1,
        champion_version=str(champion.version) if champion is not None else None,
        champion_f1=current_f1,
        promoted=promoted,
        forced=force,
    )
