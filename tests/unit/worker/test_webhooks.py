"""The deliverer's address checks at send time (worker/webhooks.py), with no network: names resolve from
/etc/hosts, and nothing connects."""

import pytest

from shared import webhooks
from shared.settings import Settings
from worker.webhooks import resolve, send


def test_a_listed_name_that_resolves_to_an_unlisted_loopback_address_is_refused() -> None:
    target = webhooks.Target("http", "localhost", 80, "/")
    with pytest.raises(webhooks.UrlRefused, match="loopback or private address not listed"):
        resolve(target, webhooks.parse_allowed("localhost"))


def test_a_listed_name_resolves_to_the_addresses_it_checked_when_they_are_listed() -> None:
    addresses = resolve(webhooks.Target("http", "localhost", 80, "/"),
                        webhooks.parse_allowed("localhost,127.0.0.0/8,::1"))
    assert addresses and set(addresses) <= {"127.0.0.1", "::1"}


def test_send_checks_the_url_and_its_addresses_before_connecting() -> None:
    settings = Settings(webhook_allow_http=True)
    with pytest.raises(webhooks.UrlRefused, match="not listed"):
        send("http://localhost:1/hook", b"{}", "t1", 1, "secret", webhooks.parse_allowed("localhost"), settings)
    with pytest.raises(webhooks.UrlRefused, match="never allowed"):
        send("http://169.254.169.254/", b"{}", "t1", 1, "secret", webhooks.parse_allowed("169.254.169.254"),
             settings)
