"""Give prometheus_client's multiprocess mode an empty directory, in a server's main process before it forks workers.

prometheus_client picks its multiprocess mode when it is first imported, from PROMETHEUS_MULTIPROC_DIR, so the
variable must be set before any server worker imports it: this module imports nothing of prometheus_client.
Each worker process then writes its counters and histograms to its own files there, and GET /metrics sums them.
"""

import atexit
import glob
import os
import shutil
import tempfile

from shared.settings import Settings

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(settings: Settings) -> str | None:
    """Point PROMETHEUS_MULTIPROC_DIR at an empty directory (a new temporary one if unset); None when METRICS is off."""
    if not settings.metrics:
        return None
    path = os.environ.get(ENV)
    if path:
        # Files left by an earlier run would add its figures to this one's: prometheus_client requires a wipe.
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
        return path
    # Each figure is a write to a memory-mapped file: on tmpfs it never waits for a disk's writeback.
    shm = "/dev/shm"
    path = tempfile.mkdtemp(prefix="iris-metrics-", dir=shm if os.access(shm, os.W_OK) else None)
    os.environ[ENV] = path
    atexit.register(_remove, path, os.getpid())
    return path


def _remove(path: str, owner: int) -> None:
    # gunicorn's workers run atexit handlers inherited from the master: only the process that made it removes it.
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)
