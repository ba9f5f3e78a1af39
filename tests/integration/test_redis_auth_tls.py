"""Redis with a password and Redis over TLS, both set through the broker and backend URLs alone."""

import logging
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from api import create_app
from shared.celery_app import create_celery
from tests.helpers import (
    SEED_EXAMPLE,
    AuthRedisServer,
    RedisServer,
    WorkerProcess,
    make_settings,
    poll_until_done,
    wait_until_ready,
)

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def serve_every_route(env: dict[str, str]) -> list[str]:
    """Run a worker on ``env``; check sync, async + poll, batch and /readyz; return every text seen."""
    worker = WorkerProcess(env, extra=("-l", "info")).start()  # info: the worker logs the broker URL it joins
    try:
        client = create_app(make_settings(env)).test_client()
        sync = client.post("/v1/classify", json=SEED_EXAMPLE)
        assert sync.status_code == 200, sync.get_json()
        assert sync.get_json()["data"]["pred_label"] == "Iris-virginica"
        accepted = client.post("/v1/classify/async", json=SETOSA)
        assert accepted.status_code == 202, accepted.get_json()
        polled = poll_until_done(client, accepted.headers["Location"])
        assert polled["status"] == "SUCCESS" and polled["result"]["pred_label"] == "Iris-setosa"
        batch = client.post("/v1/classify/batch", json={"instances": [SEED_EXAMPLE, SETOSA]})
        assert batch.status_code == 200, batch.get_json()
        assert [row["pred_label"] for row in batch.get_json()["data"]] == ["Iris-virginica", "Iris-setosa"]
        ready = wait_until_ready(client)
        assert worker.hostname in ready.get_json()["data"]["workers"]
        texts = [r.get_data(as_text=True) for r in (sync, accepted, batch, ready)]
    finally:
        worker.stop()
    stderr = worker.stderr()
    assert "Connected to" in stderr  # the line that names the broker URL was logged, so checking it means something
    return [*texts, stderr]


def assert_every_route_answers_503(env: dict[str, str]) -> list[str]:
    """Check that every route answers the 503 envelope when Redis refuses us; return the bodies."""
    client = create_app(make_settings(env)).test_client()
    calls = [("post", "/v1/classify", SEED_EXAMPLE), ("post", "/v1/classify/async", SEED_EXAMPLE),
             ("post", "/v1/classify/batch", {"instances": [SEED_EXAMPLE]}), ("get", "/readyz", None),
             ("get", f"/v1/tasks/{uuid.uuid4()}", None)]
    bodies = []
    for method, path, body in calls:
        started = time.monotonic()
        resp = getattr(client, method)(path, json=body)
        # Refused at once, not after a socket timeout (5 s) or the sync wait (10 s): nothing hangs.
        assert time.monotonic() - started < 5, path
        error = resp.get_json()["error"]
        assert resp.status_code == 503 and error["code"] == "503", (path, resp.get_json())
        assert error["raised"] == "QueueUnavailable" and "Traceback" not in error["message"]
        bodies.append(resp.get_data(as_text=True))
    return bodies


# -- password ----------------------------------------------------------------------------------------------

def with_redis(env: dict[str, str], broker: str, backend: str) -> dict[str, str]:
    return {**env, "CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": backend}


def test_password_in_the_urls_serves_every_route_and_is_never_shown(
        stack_env: dict[str, str], auth_redis: AuthRedisServer, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    env = with_redis(stack_env, auth_redis.url(0), auth_redis.url(1))
    texts = serve_every_route(env)
    app = create_celery(make_settings(env))
    # What the worker's startup banner prints for the broker and the result backend.
    with app.connection_for_write() as conn:
        banner = [conn.as_uri(), app.backend.as_uri()]
    app.close()
    assert all(":**@" in uri for uri in banner), banner
    for text in [*texts, *banner, caplog.text]:
        assert secret not in text


def test_wrong_password_answers_503_and_is_never_shown(
        stack_env: dict[str, str], auth_redis: AuthRedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = f"wrong-{uuid.uuid4().hex}"
    env = with_redis(stack_env, *(f"redis://:{wrong}@127.0.0.1:{auth_redis.port}/{db}" for db in (0, 1)))
    bodies = assert_every_route_answers_503(env)
    logfile = tmp_path / "worker.log"
    worker = WorkerProcess(env, extra=("--logfile", str(logfile))).start(wait=False)
    try:
        deadline = time.monotonic() + 60
        while "Cannot connect to" not in (logfile.read_text() if logfile.exists() else ""):
            assert worker.proc is not None and worker.proc.poll() is None, worker.stderr()  # it retries, never dies
            assert time.monotonic() < deadline, "the worker never logged the refused broker URL"
            time.sleep(0.2)
    finally:
        worker.stop()
    for text in [*bodies, logfile.read_text(), worker.stderr(), caplog.text]:
        assert wrong not in text


# -- TLS -----------------------------------------------------------------------------------------------------

def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(name: str, cwd: Path) -> None:
    """Create a self-signed CA ``name.pem`` with key ``name.key``."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=cwd)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Make a CA, a server and a client certificate that it signs, and an unrelated second CA."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make certificates for a TLS Redis")
    server = shutil.which("redis-server")
    probe = subprocess.run([server or "redis-server", "--port", "0", "--tls-port", "1"],
                           capture_output=True, text=True, timeout=10)
    if "Bad directive" in probe.stdout + probe.stderr:
        pytest.skip("this redis-server was built without TLS (it rejects --tls-port)")
    home = tmp_path_factory.mktemp("certs")
    make_ca("ca", home)
    make_ca("other-ca", home)
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=home)
        # Python checks the IP against subjectAltName (never the CN); 3.13's strict mode also wants the key ids.
        (home / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                          "authorityKeyIdentifier=keyid,issuer\nsubjectKeyIdentifier=hash\n"
                                          f"extendedKeyUsage={name}Auth\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=home)
    return home


class TlsRedisServer(RedisServer):
    """A private redis-server that accepts only TLS connections, on the port plain servers would use.

    ``mutual`` also makes it require a client certificate and a password, as some managed Redis services do.
    """

    def __init__(self, workdir: Path, certs: Path, mutual: bool = False) -> None:
        super().__init__(workdir, aof=False, password=f"p@ss/{uuid.uuid4().hex}" if mutual else None)
        self.certs, self.mutual = certs, mutual
        self.args = ("--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(certs / "server.pem"),
                     "--tls-key-file", str(certs / "server.key"), "--tls-ca-cert-file", str(certs / "ca.pem"),
                     "--tls-auth-clients", "yes" if mutual else "no")

    def url(self, db: int = 0, ca: str = "ca.pem") -> str:
        """Return the ``rediss://`` URL of database ``db``, trusting the CA in file ``ca`` of the certificates."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        query = f"ssl_cert_reqs=required&ssl_ca_certs={self.certs / ca}"
        if self.mutual:
            query += f"&ssl_certfile={self.certs / 'client.pem'}&ssl_keyfile={self.certs / 'client.key'}"
        return f"rediss://{auth}127.0.0.1:{self.port}/{db}?{query}"


@pytest.fixture
def tls_redis(request: pytest.FixtureRequest, tmp_path: Path, certs: Path) -> Iterator[TlsRedisServer]:
    server = TlsRedisServer(tmp_path / "redis", certs, mutual=getattr(request, "param", False))
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("tls_redis", [False, True], indirect=True, ids=["server-cert", "client-cert-and-password"])
def test_rediss_urls_serve_every_route(stack_env: dict[str, str], tls_redis: TlsRedisServer) -> None:
    # The server speaks only TLS: a client that fell back to plain TCP would fail every route below.
    texts = serve_every_route(with_redis(stack_env, tls_redis.url(0), tls_redis.url(1)))
    if tls_redis.password:
        assert not any(tls_redis.password[-32:] in text for text in texts)  # its unique part, in any encoding


def test_rediss_url_without_ssl_parameters_still_uses_tls_and_verifies(
        stack_env: dict[str, str], tls_redis: TlsRedisServer) -> None:
    bare = f"rediss://127.0.0.1:{tls_redis.port}/0"
    app = create_celery(make_settings(with_redis(stack_env, bare, bare)))
    # Our CA is in no system store: a verified TLS handshake fails, where plain TCP or an unverified one would not.
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"), app.connection_for_write() as conn:
        conn.default_channel.client.ping()
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        app.backend.client.ping()
    app.close()


def test_rediss_url_trusting_the_wrong_ca_answers_503(stack_env: dict[str, str], tls_redis: TlsRedisServer) -> None:
    env = with_redis(stack_env, tls_redis.url(0, ca="other-ca.pem"), tls_redis.url(1, ca="other-ca.pem"))
    assert_every_route_answers_503(env)
