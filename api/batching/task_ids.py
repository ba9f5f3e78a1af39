"""Issue random (version 4) UUIDs for task ids from a pool: one ``os.urandom`` call per 256 ids, not per id.

``uuid.uuid4()`` makes a system call per id, and CPython releases the GIL around it, so under load each id
can hand the GIL to another thread and back: two context switches per request. The ids stay as unguessable
as ``uuid4``'s (a task id is a poll URL), and the pool is emptied in a forked child so no two processes share.
"""

import os
from collections import deque

_BATCH = 256
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}  # RFC 9562 variant bits 10xx
_pool: deque[str] = deque()


def _fill() -> None:
    raw = os.urandom(16 * _BATCH).hex()
    _pool.extend(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"
                 for h in (raw[i:i + 32] for i in range(0, len(raw), 32)))


def uuid4() -> str:
    """Return a fresh random UUID as the 36-character string ``str(uuid.uuid4())`` gives."""
    try:
        return _pool.popleft()  # atomic: threads never get the same id
    except IndexError:
        _fill()
        return _pool.popleft()


os.register_at_fork(after_in_child=_pool.clear)
