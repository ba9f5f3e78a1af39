"""The Redis transport: kombu's, with one client per connection pool instead of one per call."""

from kombu import Connection

from shared.celery_app import create_celery
from shared.redis_transport import Channel, Transport
from shared.settings import Settings
from tests.conftest import BROKER_DB


def test_redis_brokers_use_the_client_reusing_transport() -> None:
    app = create_celery(Settings(celery_broker_url="redis://127.0.0.1:6399/0"))
    assert isinstance(app.connection_for_write().transport, Transport)


def test_other_brokers_keep_their_own_transport() -> None:
    app = create_celery(Settings(celery_broker_url="amqp://guest:guest@127.0.0.1:5672//"))
    assert not isinstance(app.connection_for_write().transport, Transport)


def test_channel_reuses_one_client_until_its_pool_is_replaced(redis_base: str) -> None:
    with Connection(f"{redis_base}/{BROKER_DB}", transport=Transport) as conn:
        channel = conn.default_channel
        assert isinstance(channel, Channel)
        first = channel._create_client()
        with channel.conn_or_acquire() as client:
            assert client is first
        assert channel._create_client(asynchronous=True) is not first
        channel._pool = None  # what kombu does after a fork or on close
        assert channel._create_client() is not first
