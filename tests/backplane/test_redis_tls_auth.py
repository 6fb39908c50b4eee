"""The broker over TLS with a password (rediss://:pw@…): commands and the
subscription, which is a connection of the broker's own (redis_subscription.py)."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import redis

from hubbub.backplane import BackplaneUnavailable

from .conftest import free_port
from .helpers import Node, wait_until

PASSWORD = "s3cret-pw"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the TLS backplane test needs it)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(params=["server-cert", "client-cert"])
def tls_redis(tmp_path, request):
    """A redis-server of the test's own speaking only TLS, with a password;
    its certificate (self-signed, for 127.0.0.1) is the CA the URL names.
    ``client-cert``: it also requires a client certificate (the same one),
    which the URL names with ``ssl_certfile``/``ssl_keyfile``."""
    clients_auth = request.param == "client-cert"
    if shutil.which("redis-server") is None or shutil.which("openssl") is None:
        _unavailable("redis-server and openssl are needed for the TLS backplane test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
         "--tls-auth-clients", "yes" if clients_auth else "no", "--requirepass", PASSWORD, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client_files = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)} if clients_auth else {}
    client = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(cert), password=PASSWORD,
                         **client_files)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                process.wait()
                _unavailable("redis-server did not start with TLS (built without TLS support?)")
            time.sleep(0.05)
    query = "".join(f"&{name}={value}" for name, value in client_files.items())
    yield f"127.0.0.1:{port}/0?ssl_ca_certs={cert}{query}"
    process.kill()
    process.wait()


async def test_publications_flow_over_tls_with_a_password(tls_redis):
    a = await Node(f"rediss://:{PASSWORD}@{tls_redis}", "tls:").start()
    b = await Node(f"rediss://:{PASSWORD}@{tls_redis}", "tls:").start()
    try:
        numbered = [await a.broker.publish(b"over tls %d" % i) for i in range(5)]
        await wait_until(lambda: len(b.received) >= 5, what="node B hearing node A over TLS")
        assert [seq for _, seq, _ in b.received] == [seq for _, seq in numbered]
        assert a.broker.healthy and b.broker.healthy
    finally:
        await a.broker.stop()
        await b.broker.stop()


async def test_a_wrong_password_is_refused_with_the_reason(tls_redis):
    node = Node(f"rediss://:bad-pw-x7@{tls_redis}", "tls:")
    with pytest.raises(BackplaneUnavailable) as refused:
        await node.start()
    assert "cannot reach the backplane" in refused.value.reason
    assert "invalid username-password" in refused.value.reason
    assert "bad-pw-x7" not in refused.value.reason  # the password is masked
