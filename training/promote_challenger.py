"""Move the champion alias to the challenger once shadowing shows they agree: ``python -m training.promote_challenger``
(``make promote-challenger``).

The workers shadow sampled messages with the ``@challenger`` version (SHADOW_SAMPLE; worker/shadow.py) and add the
rows they compared, and those on which both gave the same label, to one Redis hash per (champion, challenger)
pair. This reads the pair of the aliases as they are now and refuses, with one line and exit status 1, when there
is no challenger, when fewer than ``--min-rows`` rows were shadowed, or when they agreed on less than
``--min-agreement`` of them. Otherwise it moves ``@champion`` as every promotion does (the new champion is tagged
``previous_champion``, so ``make rollback`` undoes it) and removes ``@challenger``: the challenger is the champion
now, and shadowing a version against itself would measure nothing. The workers follow within MODEL_POLL_SECONDS.
"""

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from mlflow import MlflowClient

from shared.settings import Settings, get_settings
from training.registry import get_champion, promote

MIN_AGREEMENT = 0.95
MIN_ROWS = 1000


class PromotionRefused(RuntimeError):
    """The challenger cannot be promoted yet; the aliases are left where they were."""


@dataclass(frozen=True)
class Agreement:
    """What the workers counted for one (champion, challenger) pair."""

    rows: int
    agreed: int

    @property
    def share(self) -> float:
        """Return the share of shadowed rows on which both versions gave the same label (0 with no rows)."""
        return self.agreed / self.rows if self.rows else 0.0


def refusal(agreement: Agreement, min_rows: int, min_agreement: float) -> str | None:
    """Return why the challenger may not be promoted on this agreement, or None when it may."""
    if agreement.rows < min_rows:
        return (f"only {agreement.rows} rows shadowed, fewer than the {min_rows} required; raise SHADOW_SAMPLE "
                "or wait for more traffic")
    if agreement.share < min_agreement:
        return (f"it agreed with the champion on {agreement.share:.2%} of {agreement.rows} rows, below the "
                f"{min_agreement:.2%} required")
    return None


def read_agreement(client: Any, settings: Settings, champion: str, challenger: str) -> Agreement:
    """Read the workers' counts for the pair from Redis (HGET only: the ACL of deploy/redis allows no HGETALL)."""
    key = settings.shadow_stats_key(champion, challenger)
    with client.pipeline() as pipe:
        rows, agreed = pipe.hget(key, "rows").hget(key, "agree").execute()
    return Agreement(rows=int(rows or 0), agreed=int(agreed or 0))


@dataclass(frozen=True)
class Promotion:
    """One move of the champion alias to the challenger."""

    name: str
    alias: str
    challenger_alias: str
    from_version: str
    to_version: str
    agreement: Agreement

    def describe(self) -> str:
        """Return the one line the CLI prints."""
        return (f"{self.name}@{self.alias} moved from version {self.from_version} to {self.to_version}, which agreed "
                f"on {self.agreement.share:.2%} of {self.agreement.rows} shadowed rows; @{self.challenger_alias} "
                f"removed; the workers follow within MODEL_POLL_SECONDS (make reload: at once; make rollback undoes "
                f"it)")


def promote_challenger(client: MlflowClient, stats: Any, settings: Settings, min_rows: int = MIN_ROWS,
                       min_agreement: float = MIN_AGREEMENT) -> Promotion:
    """Move the champion alias to the challenger if it agreed enough; raise PromotionRefused when it may not."""
    name, alias, challenger_alias = settings.iris_model_name, settings.iris_model_alias, settings.challenger_alias
    challenger = get_champion(client, name, challenger_alias)
    if challenger is None:
        raise PromotionRefused(f"{name}@{challenger_alias} does not exist; there is no challenger to promote")
    champion = get_champion(client, name, alias)
    if champion is None:
        raise PromotionRefused(f"{name}@{alias} does not exist; train a champion first (make train)")
    old, new = str(champion.version), str(challenger.version)
    if old == new:
        raise PromotionRefused(f"{name}@{challenger_alias} is version {new}, which is the champion already")
    agreement = read_agreement(stats, settings, old, new)
    reason = refusal(agreement, min_rows, min_agreement)
    if reason is not None:
        raise PromotionRefused(f"challenger version {new} against champion version {old}: {reason}")
    promote(client, name, alias, new)  # tags version new previous_champion=old: make rollback's record
    client.delete_registered_model_alias(name, challenger_alias)
    return Promotion(name=name, alias=alias, challenger_alias=challenger_alias, from_version=old, to_version=new,
                     agreement=agreement)


def share(text: str) -> float:
    """Parse a share between 0 and 1 (argparse's type)."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the promotion CLI and return the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m training.promote_challenger",
        description="Move the champion alias to the challenger once the workers' shadowing shows they agree.",
    )
    parser.add_argument("--min-agreement", type=share, default=MIN_AGREEMENT,
                        help=f"share of shadowed rows both must label alike ({MIN_AGREEMENT})")
    parser.add_argument("--min-rows", type=int, default=MIN_ROWS, help=f"shadowed rows needed at least ({MIN_ROWS})")
    args = parser.parse_args(argv)
    settings = get_settings()
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    stats = redis.Redis.from_url(settings.celery_result_backend, socket_timeout=5, socket_connect_timeout=5)
    try:
        outcome = promote_challenger(client, stats, settings, args.min_rows, args.min_agreement)
    except PromotionRefused as exc:
        print(f"promote-challenger: {exc}", file=sys.stderr)
        return 1
    except redis.RedisError as exc:
        print(f"promote-challenger: cannot read the agreement from the results Redis: {type(exc).__name__}",
              file=sys.stderr)
        return 1
    finally:
        stats.close()
    print(outcome.describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
