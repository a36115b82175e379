"""The pure rules of job webhooks: signature, SSRF classifier, retry schedule, event ids.

Oracles are independent of the code under test: the Standard Webhooks specification's
published example (a literal), ``purser_client``'s verifier (a separate package with
its own HMAC code), literal address tables and hand-added schedules.
"""

from __future__ import annotations

import base64
import http.server
import ipaddress
import socket
import threading
from datetime import UTC, datetime

import pytest
from purser_client import verify_webhook

from services import webhook_events, webhook_http, webhook_signing
from services.webhook_http import UrlRefused, address_refusal, check_url, next_delay, parse_retry_after

# The example of the Standard Webhooks specification (standard-webhooks repository, spec/).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signer_produces_the_specification_example() -> None:
    assert webhook_signing.sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_headers_carry_one_signature_per_secret_and_either_secret_verifies() -> None:
    other = webhook_signing.new_secret()
    headers = webhook_signing.headers([SPEC_SECRET, other], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)
    assert headers["webhook-id"] == SPEC_ID and headers["webhook-timestamp"] == str(SPEC_TIMESTAMP)
    first, second = headers["webhook-signature"].split(" ")
    assert first == SPEC_SIGNATURE and second.startswith("v1,")
    for secret in (SPEC_SECRET, other):  # a receiver holding either the old or the new secret
        assert verify_webhook(secret, headers, SPEC_BODY, now=SPEC_TIMESTAMP) == {"test": 2432232314}


def test_new_secrets_are_whsec_and_32_random_bytes() -> None:
    one, two = webhook_signing.new_secret(), webhook_signing.new_secret()
    assert one != two and one.startswith("whsec_")
    assert len(base64.b64decode(one.removeprefix("whsec_"), validate=True)) == 32


@pytest.mark.parametrize("secret", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!"])
def test_a_secret_that_is_not_whsec_base64_is_refused(secret: str) -> None:
    with pytest.raises(ValueError):
        webhook_signing.sign(secret, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fc00::1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "private"), ("::", "unspecified"),
    ("100.64.0.1", "not global"), ("240.0.0.1", "private"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"),  # IPv4-mapped
    ("2002:7f00:1::1", "loopback"),  # 6to4 carrying 127.0.0.1
    ("8.8.8.8", None), ("93.184.215.14", None), ("2606:4700:4700::1111", None),
])
def test_address_classifier(address: str, reason: str | None) -> None:
    refusal = address_refusal(ipaddress.ip_address(address))
    if reason is None:
        assert refusal is None
    else:
        assert refusal is not None  # the first matching name may differ between Python versions
        if reason in ("loopback", "link-local", "multicast"):
            assert refusal == reason


def _resolver(*addresses: str):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int, type: int = 0):  # type: ignore[no-untyped-def]  # noqa: A002
        if not addresses:
            raise socket.gaierror("no such host")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]
    return resolve


@pytest.mark.parametrize(("url", "addresses", "code"), [
    ("https://localhost/hook", ("127.0.0.1",), "WEBHOOK_URL_PRIVATE"),
    ("https://internal.example/hook", ("93.184.215.14", "10.0.0.7"), "WEBHOOK_URL_PRIVATE"),  # any address counts
    ("https://metadata.example/", ("169.254.169.254",), "WEBHOOK_URL_PRIVATE"),
    ("https://[::1]:8443/hook", (), "WEBHOOK_URL_PRIVATE"),
    ("https://10.0.0.1/hook", (), "WEBHOOK_URL_PRIVATE"),
    ("http://hooks.example/hook", ("93.184.215.14",), "WEBHOOK_URL_INVALID"),  # https without private targets
    ("ftp://hooks.example/hook", ("93.184.215.14",), "WEBHOOK_URL_INVALID"),
    ("https://user:pw@hooks.example/hook", ("93.184.215.14",), "WEBHOOK_URL_INVALID"),
    ("https://nowhere.example/hook", (), "WEBHOOK_URL_INVALID"),
    ("https:///hook", (), "WEBHOOK_URL_INVALID"),
    ("https://hooks.example:99999/", ("93.184.215.14",), "WEBHOOK_URL_INVALID"),
])
def test_check_url_refuses(url: str, addresses: tuple[str, ...], code: str) -> None:
    with pytest.raises(UrlRefused) as refused:
        check_url(url, allow_private=False, resolver=_resolver(*addresses))
    assert refused.value.code == code


def test_check_url_accepts_public_https_and_private_only_when_allowed() -> None:
    public = check_url("https://hooks.example/h", allow_private=False, resolver=_resolver("93.184.215.14"))
    assert [str(a) for a in public] == ["93.184.215.14"]
    assert check_url("http://127.0.0.1:8080/h", allow_private=True, resolver=_resolver())
    with pytest.raises(UrlRefused):
        check_url("ftp://127.0.0.1/h", allow_private=True, resolver=_resolver())


def test_the_default_schedule_is_seven_attempts_over_about_a_day() -> None:
    from infra.config import load_settings

    schedule = load_settings({"APP_ENV": "test"}).webhook_backoff_seconds
    assert schedule == webhook_http.DEFAULT_SCHEDULE == (5, 300, 1800, 7200, 18000, 36000)
    delays = [next_delay(n, schedule) for n in range(1, 8)]
    assert delays == [5, 300, 1800, 7200, 18000, 36000, None]  # the 7th failure is final
    assert 17 * 3600 < sum(d for d in delays if d) < 24 * 3600


def test_retry_after_wins_only_when_longer_and_is_capped() -> None:
    schedule = (5, 300)
    assert next_delay(1, schedule, retry_after=60) == 60
    assert next_delay(2, schedule, retry_after=60) == 300
    assert next_delay(1, schedule, retry_after=10**9) == 24 * 3600
    assert next_delay(3, schedule, retry_after=60) is None  # Retry-After never extends the schedule
    assert next_delay(0, schedule) is None


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Thu, 01 Jan 2026 00:01:30 GMT", now=now) == 90
    assert parse_retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now=now) == 0
    for bad in (None, "", "soon", "-5", "1.5"):
        assert parse_retry_after(bad) is None


def test_backoff_variable_parses_and_refuses() -> None:
    from infra.config import ConfigError, load_settings

    parsed = load_settings({"APP_ENV": "test", "WEBHOOK_BACKOFF_SECONDS": "1, 2.5,3"}).webhook_backoff_seconds
    assert parsed == (1, 2.5, 3)
    for bad in ("", "0", "a,b", "-1", "90000"):
        if bad:
            with pytest.raises(ConfigError):
                load_settings({"APP_ENV": "test", "WEBHOOK_BACKOFF_SECONDS": bad})
    assert load_settings({"APP_ENV": "production", **_prod()}).webhook_allow_private is False


def _prod() -> dict[str, str]:
    return {"MONGODB_URI": "mongodb://db/?replicaSet=rs", "REDIS_URL": "redis://r/0", "JWT_SECRET": "j" * 40,
            "PROVIDER_WEBHOOK_SECRET": "p" * 20, "PAYOUT_PROVIDER_URL": "https://provider.example"}


@pytest.mark.parametrize(("record", "result", "types"), [
    ({"type": "transfer", "outcome": "settled"}, {}, ["job.settled"]),
    ({"type": "transfer", "outcome": "failed"}, None, ["job.failed"]),
    ({"type": "payout", "outcome": "settled"}, {"status": "pending"}, ["job.settled", "payout.pending"]),
    ({"type": "payout", "outcome": "failed"}, None, ["job.failed"]),
    ({"type": "payout_event", "outcome": "settled"}, {"status": "paid"}, ["job.settled", "payout.paid"]),
    ({"type": "payout_event", "outcome": "settled"}, {"status": "returned"}, ["job.settled", "payout.returned"]),
    ({"type": "refund", "outcome": "settled"}, {}, ["job.settled", "refund.settled"]),
    ({"type": "chargeback", "outcome": "settled"}, {}, ["job.settled", "chargeback.settled"]),
])
def test_event_types_of_an_audit_record(record: dict, result: dict | None, types: list[str]) -> None:
    assert webhook_events.event_types_of(record, {"result": result}) == types
    assert set(types) <= set(webhook_events.EVENT_TYPES)


def test_ids_are_derived_so_a_second_dispatch_inserts_nothing() -> None:
    job = "65a1b2c3d4e5f60718293a4b"
    assert webhook_events.event_id(job, "job.settled") == webhook_events.event_id(job, "job.failed") == f"evt_{job}"
    assert webhook_events.event_id(job, "payout.paid") == f"evt_{job}_payout"
    one = webhook_events.delivery_id(f"evt_{job}", "65a1b2c3d4e5f60718293a4c")
    assert one == webhook_events.delivery_id(f"evt_{job}", "65a1b2c3d4e5f60718293a4c")
    assert one != webhook_events.delivery_id(f"evt_{job}", "65a1b2c3d4e5f60718293a4d")
    assert len(one) == 24 and int(one, 16) >= 0  # the API's id shape (path parameters, cursors)


class _Counting(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        type(self).hits += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_name_that_resolves_inside_at_connect_time_is_refused_before_sending(scheme: str) -> None:
    # DNS rebinding: check_url saw a public address, the connection goes to loopback.
    # Posting straight to "localhost" is that second moment; nothing may reach it.
    server = http.server.HTTPServer(("127.0.0.1", 0), _Counting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"{scheme}://localhost:{server.server_port}/hook"
        refused = webhook_http.post(url, b"{}", {}, 5)
        assert refused.status == 0 and "loopback address" in (refused.error or ""), refused
        assert _Counting.hits == 0
        if scheme == "http":  # allowed (dev and test), the same call is delivered
            assert webhook_http.post(url, b"{}", {}, 5, allow_private=True).status == 204
            assert _Counting.hits == 1
    finally:
        server.shutdown()
        server.server_close()
        _Counting.hits = 0
