"""The stack runs as Redis's least-privileged ACL user: `make up` against a Redis whose only user for the stack may
run the commands in deploy/redis/iris-acl.conf, and nothing else."""

import json
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers import ROOT, SEED_EXAMPLE, RedisServer, UpScript, free_port

pytestmark = pytest.mark.integration

ACL_RULES = ROOT / "deploy" / "redis" / "iris-acl.conf"


def acl_rules() -> str:
    """Return the rules line of deploy/redis/iris-acl.conf, as docker-compose.yml reads it."""
    lines = [line for line in ACL_RULES.read_text().splitlines() if line and not line.startswith("#")]
    assert len(lines) == 1, "deploy/redis/iris-acl.conf holds one rules line"
    return lines[0]


class AclRedisServer(RedisServer):
    """A private redis-server whose default user is off: "iris" has the stack's rules, "admin" (the test's) all."""

    def __init__(self, workdir: Path) -> None:
        self.iris_password, self.admin_password = secrets.token_hex(16), secrets.token_hex(16)
        acl = workdir / "users.acl"
        workdir.mkdir(parents=True, exist_ok=True)
        acl.write_text(f"user default off\nuser iris on >{self.iris_password} {acl_rules()}\n"
                       f"user admin on >{self.admin_password} ~* &* +@all\n")
        super().__init__(workdir, args=("--aclfile", str(acl)))

    def url(self, db: int = 0, user: str = "admin") -> str:
        password = self.admin_password if user == "admin" else self.iris_password
        return f"redis://{user}:{password}@127.0.0.1:{self.port}/{db}"


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[AclRedisServer]:
    server = AclRedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def _call(url: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def test_the_acl_user_may_not_run_what_the_stack_never_needs(acl_redis: AclRedisServer) -> None:
    iris = redis.Redis.from_url(acl_redis.url(0, user="iris"))
    assert iris.ping()
    for command in (("CONFIG", "GET", "maxmemory"), ("FLUSHALL",), ("KEYS", "*"), ("SCAN", "0"),
                    ("ACL", "LIST"), ("SHUTDOWN",), ("MODULE", "LIST")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            iris.execute_command(*command)
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=acl_redis.port).ping()  # the default user is off
    iris.close()


def test_make_up_serves_every_route_as_the_acl_user_and_redis_denies_nothing(
        stack_env: dict[str, str], acl_redis: AclRedisServer, up: Callable[[dict[str, str]], UpScript]) -> None:
    env = {**stack_env, "CELERY_BROKER_URL": acl_redis.url(0, user="iris"),
           "CELERY_RESULT_BACKEND": acl_redis.url(1, user="iris"), "PORT": str(free_port()),
           "WORKER_METRICS_PORT": str(free_port())}
    admin = redis.Redis.from_url(acl_redis.url(0))
    admin.acl_log_reset()
    stack = up(env)
    base = f"http://127.0.0.1:{stack.port}"
    stack.wait_for(lambda: _call(f"{base}/readyz")[0] == 200, "/readyz", 120)

    assert _call(f"{base}/v1/classify", SEED_EXAMPLE)[0] == 200
    status, body = _call(f"{base}/v1/classify/async", SEED_EXAMPLE)
    assert status == 202, body
    poll = f"{base}/v1/tasks/{body['data']['task_id']}"
    done = stack.wait_for(lambda: _call(poll)[1].get("data", {}).get("status") == "SUCCESS", "the async task", 30)
    assert done
    assert _call(f"{base}/v1/classify/batch", {"instances": [SEED_EXAMPLE] * 3})[0] == 200
    assert _call(f"{base}/invocations", {"inputs": [[7.7, 2.6, 6.9, 2.3]]})[0] == 200
    assert _call(f"{base}/version")[0] == 200
    # `make reload`: a control broadcast, and the workers' reply to it.
    reload = subprocess.run([sys.executable, "-m", "shared.reload"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert reload.returncode == 0, reload.stderr
    # A worker's periodic work (unacked restore, heartbeats, the watchdog's probe) runs at least once.
    time.sleep(6)
    assert _call(f"{base}/v1/classify", SEED_EXAMPLE)[0] == 200

    denied = admin.acl_log()
    assert denied == [], f"Redis refused the stack's commands: {denied}"
    admin.close()
