"""The webhook HTTP client against receivers that answer in every way HTTP/1.x allows (chunked, long,
without a length, closing kept-alive connections), and against ones that answer badly or not at all."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from events import delivery, services
from events.models import WebhookAttempt, WebhookDelivery
from events.services import emit
from events.types import EventType


class RawReceiver:
    """A socket server that reads each request (head and Content-Length body) and answers with the
    bytes ``answer(n)`` returns for the n-th request (None: never answer), then closes the connection
    when ``close_after`` says so."""

    def __init__(self, answer: Callable[[int], bytes | None], close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.connections = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook?token=t0k"
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        # The client closing a connection with an answer left unread (a long one) resets it.
        with contextlib.suppress(OSError), conn:
            self._exchange(conn)

    def _exchange(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        while True:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = reader.readline()
                if not line:
                    return
                head += line
            length = next(
                (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")), 0
            )
            self.requests.append(head + reader.read(length))
            answer = self.answer(len(self.requests))
            if answer is None:
                self.stopped.wait(30)
                return
            conn.sendall(answer)
            if self.close_after:
                return

    def close(self) -> None:
        self.stopped.set()
        self.server.close()


@pytest.fixture
def raw_receiver() -> Iterator[Callable[..., RawReceiver]]:
    started: list[RawReceiver] = []

    def start(answer: Callable[[int], bytes | None], close_after: bool = False) -> RawReceiver:
        started.append(RawReceiver(answer, close_after))
        return started[-1]

    yield start
    for receiver in started:
        receiver.close()


def run_once(endpoint_pk) -> None:
    now = timezone.now()
    delivery.dispatch_pending_events(now=now)
    delivery.deliver_due(endpoint_id=endpoint_pk, now=now)


LONG = b"x" * 100_000
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
)
ANSWERS = {
    "chunked": (CHUNKED, False, "hello world"),
    "long with a length": (b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + LONG, False, "x" * 500),
    "long and chunked": (
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n186a0\r\n" + LONG + b"\r\n0\r\n\r\n",
        False,
        "x" * 500,
    ),
    "without a length, then closed": (b"HTTP/1.1 200 OK\r\n\r\nthe end", True, "the end"),
    "after an interim 100": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", False, ""),
    "HTTP/1.0": (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", True, "ok"),
    "Connection: close": (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", True, "ok"),
}


@pytest.mark.parametrize("kind", list(ANSWERS))
def test_every_well_formed_answer_is_read_recorded_and_the_next_delivery_still_goes_out(tenant, raw_receiver, kind):
    answer, server_closes, excerpt = ANSWERS[kind]
    receiver = raw_receiver(lambda n: answer, close_after=server_closes)
    endpoint = services.webhook_endpoint_create(tenant=tenant, url=receiver.url).endpoint

    for n in range(3):
        emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={"n": n})
        run_once(endpoint.pk)

    assert list(WebhookDelivery.objects.values_list("status", flat=True)) == ["succeeded"] * 3
    assert [a.response_excerpt for a in WebhookAttempt.objects.all()] == [excerpt] * 3
    assert [r.split(b" ", 2)[1] for r in receiver.requests] == [b"/hook?token=t0k"] * 3
    assert all(b"\r\nHost: 127.0.0.1:" in r and b"\r\nwebhook-id: " in r for r in receiver.requests)


@pytest.mark.parametrize(
    ("close_after", "connections"),
    [(True, 5), (False, 1)],
    ids=["receiver-closes-after-each-answer", "receiver-keeps-the-connection"],
)
def test_every_delivery_succeeds_whether_the_receiver_keeps_the_connection_or_not(
    tenant, raw_receiver, close_after, connections
):
    receiver = raw_receiver(lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", close_after=close_after)
    endpoint = services.webhook_endpoint_create(tenant=tenant, url=receiver.url).endpoint
    for n in range(5):
        emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={"n": n})

    run_once(endpoint.pk)

    assert WebhookDelivery.objects.filter(status="succeeded").count() == 5
    assert (len(receiver.requests), receiver.connections) == (5, connections)


def test_no_answer_within_the_timeout_is_a_failed_attempt_and_ends_the_drain(tenant, raw_receiver, settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.5
    receiver = raw_receiver(lambda n: None)
    endpoint = services.webhook_endpoint_create(tenant=tenant, url=receiver.url).endpoint
    for n in range(3):
        emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={"n": n})

    run_once(endpoint.pk)

    assert len(receiver.requests) == 1  # the others wait for the next round
    attempt = WebhookAttempt.objects.get()
    assert (attempt.success, attempt.status_code, attempt.error) == (False, None, "no answer within 0.5 s")
    assert sorted(WebhookDelivery.objects.values_list("attempt_count", flat=True)) == [0, 0, 1]


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"hello\r\n\r\n", "request failed: the answer is not HTTP/1.x"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n", "request failed: invalid Content-Length"),
        (b"", "connection failed: connection closed without an answer"),
    ],
)
def test_a_malformed_answer_is_a_failed_attempt(tenant, raw_receiver, answer, error):
    receiver = raw_receiver(lambda n: answer, close_after=True)
    endpoint = services.webhook_endpoint_create(tenant=tenant, url=receiver.url).endpoint
    emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={})

    run_once(endpoint.pk)

    row = WebhookDelivery.objects.get()
    assert (row.status, row.attempt_count, row.last_status_code, row.last_error) == ("pending", 1, None, error)


def _certificates(tmp_path) -> tuple[str, str, str]:
    """A throw-away CA and a certificate for 'localhost' it signed: (ca.pem, cert.pem, key.pem)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test receivers CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tuple(str(p) for p in paths)  # type: ignore[return-value]


class TLSReceiver(RawReceiver):
    """The same receiver behind TLS with a certificate for 'localhost'."""

    def __init__(self, answer: Callable[[int], bytes | None], cert: str, key: str) -> None:
        import ssl

        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert, key)
        self.handshakes = 0
        super().__init__(answer)
        self.url = self.url.replace("http://127.0.0.1:", "https://localhost:")

    def _handle(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            tls_conn = self.tls.wrap_socket(conn, server_side=True)
            self.handshakes += 1
            with tls_conn:
                self._exchange(tls_conn)


def test_https_receivers_are_reached_with_the_certificate_and_host_name_verified(tenant, tmp_path, settings):
    ca, cert, key = _certificates(tmp_path)
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nreceived"
    trusted = TLSReceiver(lambda n: ok, cert, key)
    untrusted = TLSReceiver(lambda n: ok, cert, key)
    try:
        settings.WEBHOOK_CA_BUNDLE = ca
        good = services.webhook_endpoint_create(tenant=tenant, url=trusted.url).endpoint
        emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={"n": 1})
        run_once(good.pk)
        good_delivery = WebhookDelivery.objects.get(endpoint=good)
        assert (good_delivery.status, good_delivery.last_status_code) == ("succeeded", 200)
        assert trusted.handshakes == 1 and b"webhook-signature: v1," in trusted.requests[0]

        settings.WEBHOOK_CA_BUNDLE = ""  # public roots only: the test CA is not among them
        services.webhook_endpoint_update(tenant=tenant, endpoint=good, is_active=False)
        bad = services.webhook_endpoint_create(tenant=tenant, url=untrusted.url).endpoint
        emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={"n": 2})
        run_once(bad.pk)
        refused = WebhookDelivery.objects.get(endpoint=bad)
        assert refused.status == "pending" and refused.last_status_code is None
        assert refused.last_error.startswith("connection failed: TLS error (CERTIFICATE_VERIFY_FAILED")
        assert untrusted.requests == []  # nothing was sent over an unverified connection
    finally:
        trusted.close()
        untrusted.close()


@pytest.mark.django_db(transaction=True)
def test_a_drain_whose_database_session_dies_raises_its_own_error_and_lets_go_of_the_endpoint(tenant, raw_receiver):
    import psycopg
    from django.db import OperationalError, connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (drain_pid,) = cursor.fetchone()
    params = connection.get_connection_params()

    def answer(n: int) -> bytes:
        if n == 1:  # the database session of the drain dies while the receiver answers
            with psycopg.connect(**params, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", [drain_pid])
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    receiver = raw_receiver(answer)
    endpoint = services.webhook_endpoint_create(tenant=tenant, url=receiver.url).endpoint
    emit(tenant=tenant, type=EventType.MESSAGE_SENT, payload={})
    now = timezone.now()
    delivery.dispatch_pending_events(now=now)

    with pytest.raises(OperationalError) as failed:
        delivery.deliver_due(endpoint_id=endpoint.pk, now=now)
    assert "the connection is closed" not in str(failed.value)  # the drain's own error, not the unlock's

    # The next drain (a new session) gets the endpoint; once the lease is over the delivery goes again.
    report = delivery.deliver_due(endpoint_id=endpoint.pk, now=now + timedelta(hours=1))
    assert not report.busy
    assert report.succeeded == 1
    assert WebhookDelivery.objects.get().status == WebhookDelivery.Status.SUCCEEDED
