import os
import threading
import uuid

from api.batching import task_ids


def test_ids_are_random_uuid4_strings():
    for value in [task_ids.uuid4() for _ in range(600)]:  # more than one pool's worth
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, value)


def test_ids_never_repeat_across_threads():
    seen: list[str] = []

    def take() -> None:
        seen.extend(task_ids.uuid4() for _ in range(2000))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 8000


def test_forked_child_does_not_reuse_the_parents_pool():
    task_ids.uuid4()  # the pool now holds ids a child must not hand out again
    pending = list(task_ids._pool)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, task_ids.uuid4().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child_id = os.read(read, 64).decode()
    os.close(read)
    assert uuid.UUID(child_id).version == 4
    assert child_id not in pending
