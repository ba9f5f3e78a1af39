"""Queue rows on an edge batcher without sending them, so a test drives ``flush_once`` itself."""

from api.batching.batcher import EdgeBatcher, Pending


def queue_row(batcher: EdgeBatcher, row: list[float], request_id: str | None = None) -> Pending:
    """Queue one row as ``submit`` does, minus its send and its flusher thread."""
    pending = batcher._pending(row, request_id)
    with batcher._cond:
        batcher._rows.append(pending)
    return pending
