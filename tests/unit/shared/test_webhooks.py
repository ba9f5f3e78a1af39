"""The callback URL policy, the signature and the retry schedule (shared/webhooks.py), with no network."""

import hashlib
import hmac
import ipaddress

import pytest
from pydantic import ValidationError

from shared import webhooks
from shared.settings import Settings
from shared.task_status import status_data

ALLOWED = webhooks.parse_allowed("Hooks.Example.com, 203.0.113.7, 10.1.0.0/16, 127.0.0.1, 169.254.169.254")


def refused(url: str, allow_http: bool = False) -> str:
    with pytest.raises(webhooks.UrlRefused) as info:
        webhooks.check_url(url, ALLOWED, allow_http)
    return str(info.value)


def test_a_listed_host_is_allowed_case_insensitively_with_any_port_path_and_query() -> None:
    target = webhooks.check_url("https://HOOKS.example.com.:8443/iris/done?token=abc", ALLOWED)
    assert target == webhooks.Target("https", "hooks.example.com", 8443, "/iris/done?token=abc")
    assert webhooks.check_url("https://hooks.example.com", ALLOWED).port == 443


def test_a_host_not_listed_is_refused_even_as_a_subdomain_or_suffix() -> None:
    for url in ("https://evil.example/", "https://a.hooks.example.com/", "https://hooks.example.com.evil.example/"):
        assert "not listed in WEBHOOK_ALLOWED_HOSTS" in refused(url)


def test_http_is_refused_unless_allowed_and_other_schemes_always() -> None:
    assert "scheme must be https" in refused("http://hooks.example.com/")
    assert webhooks.check_url("http://hooks.example.com/", ALLOWED, allow_http=True).port == 80
    for url in ("ftp://hooks.example.com/", "file:///etc/passwd", "gopher://hooks.example.com/", "hooks.example.com"):
        assert "scheme must be" in refused(url, allow_http=True)


@pytest.mark.parametrize("url", ["https://169.254.169.254/latest/meta-data/", "https://[fd00:ec2::254]/",
                                 "https://[::ffff:169.254.169.254]/", "https://169.254.10.1/", "https://[fe80::1]/",
                                 "https://100.100.100.200/", "https://0.0.0.0/", "https://224.0.0.1/"])
def test_link_local_metadata_and_unroutable_addresses_are_refused_even_when_listed(url: str) -> None:
    assert "never allowed" in refused(url)


@pytest.mark.parametrize("url", ["https://127.0.0.2/", "https://[::1]/", "https://10.2.0.1/", "https://192.168.1.1/",
                                 "https://172.16.0.1/", "https://8.8.8.8/"])
def test_an_ip_literal_is_refused_unless_listed_itself_or_by_a_network(url: str) -> None:
    assert "WEBHOOK_ALLOWED_HOSTS" in refused(url)


def test_listed_addresses_and_networks_are_allowed_as_literals() -> None:
    for url in ("https://127.0.0.1:9/", "https://203.0.113.7/", "https://10.1.200.3/", "https://[::ffff:10.1.0.9]/"):
        assert webhooks.check_url(url, ALLOWED).port in (9, 443)


def test_long_urls_credentials_and_control_characters_are_refused() -> None:
    long_url = "https://hooks.example.com/" + "a" * webhooks.MAX_URL_LENGTH
    assert f"longer than {webhooks.MAX_URL_LENGTH}" in refused(long_url)
    assert webhooks.check_url(long_url[:webhooks.MAX_URL_LENGTH], ALLOWED).host == "hooks.example.com"
    assert "credentials" in refused("https://user:pw@hooks.example.com/")
    assert "credentials" in refused("https://hooks.example.com@evil.example/")
    for url in ("https://hooks.example.com/\r\nX-Evil: 1", "https://hooks.example.com/ a", "https://hööks.example/"):
        assert "printable ASCII" in refused(url)
    assert "no host" in refused("https:///path")
    assert "port" in refused("https://hooks.example.com:99999/")
    assert "port" in refused("https://hooks.example.com:0/")


def test_resolved_addresses_follow_the_same_rules() -> None:
    webhooks.check_address(ipaddress.ip_address("93.184.216.34"), ALLOWED)  # public: allowed
    webhooks.check_address(ipaddress.ip_address("10.1.3.4"), ALLOWED)  # listed network
    for address in ("10.9.9.9", "127.0.0.53", "::1", "169.254.169.254", "fd00:ec2::254"):
        with pytest.raises(webhooks.UrlRefused):
            webhooks.check_address(ipaddress.ip_address(address), ALLOWED)


def test_a_malformed_network_in_the_setting_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="webhook_allowed_hosts"):
        Settings(webhook_allowed_hosts="hooks.example.com,10.0.0.0/33")


def test_the_signature_is_the_hex_hmac_sha256_of_the_exact_body() -> None:
    body = b'{"message":"success","data":{"task_id":"x"}}'
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert webhooks.signature("s3cret", body) == f"sha256={expected}"
    assert webhooks.verify("s3cret", body, f"sha256={expected}")
    assert not webhooks.verify("s3cret", body + b" ", f"sha256={expected}")
    assert not webhooks.verify("other", body, f"sha256={expected}")


def test_retries_back_off_exponentially_from_the_base() -> None:
    assert webhooks.retry_schedule(2.0, 6) == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert webhooks.retry_schedule(0.25, 3) == [0.25, 0.5]
    assert webhooks.retry_schedule(2.0, 1) == []


def test_the_default_schedule_makes_at_least_five_attempts_over_at_least_a_minute() -> None:
    settings = Settings()
    delays = webhooks.retry_schedule(settings.webhook_backoff_seconds, settings.webhook_max_attempts)
    assert settings.webhook_max_attempts >= 5
    assert sum(delays) >= 60
    # A record outlives its whole schedule with every attempt's lease.
    assert settings.webhook_record_ttl_seconds > sum(delays) + settings.webhook_max_attempts * (
        settings.webhook_lease_seconds)


def test_webhooks_are_off_by_default_and_the_secret_never_shows_in_the_settings() -> None:
    assert Settings().webhook_secret is None
    settings = Settings(webhook_secret="do-not-show-me")
    assert "do-not-show-me" not in repr(settings)
    assert "do-not-show-me" not in str(settings.model_dump())


def test_the_status_data_names_a_failure_by_type_and_redacted_message() -> None:
    failure = ValueError("cannot reach redis://:hunter2@redis:6379/0")
    data = status_data("t1", "FAILURE", failure)
    assert data == {"task_id": "t1", "status": "FAILURE", "result": None,
                    "error": {"raised": "ValueError", "message": "cannot reach redis://:***@redis:6379/0"}}
    assert status_data("t2", "SUCCESS", {"pred_label": "Iris-setosa"})["result"] == {"pred_label": "Iris-setosa"}
    assert status_data("t3", "STARTED", None) == {"task_id": "t3", "status": "STARTED", "result": None, "error": None}


def test_an_empty_webhook_secret_leaves_webhooks_off() -> None:
    assert Settings(webhook_secret="").webhook_secret is None
    assert Settings(webhook_secret="  ").webhook_secret is None
    secret = Settings(webhook_secret="s3cret").webhook_secret
    assert secret is not None and secret.get_secret_value() == "s3cret"
