"""Test credentials: JWTs, an RSA key pair and a self-signed TLS certificate."""
from __future__ import annotations

import datetime
import time
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

SECRET = "test-secret-that-is-long-enough-0123456789"
API_KEY = "test-api-key-0123456789"
AUDIENCE = "hubbub-tests"


def token(sub: str | None = "alice", *, secret: str = SECRET, alg: str = "HS256", **claims) -> str:
    body = {"aud": AUDIENCE, "exp": int(time.time()) + 600, **claims}
    if sub is not None:
        body["sub"] = sub
    return jwt.encode(body, secret, algorithm=alg)


def unsigned_token(sub: str = "alice") -> str:
    """``alg: none``: no signature at all."""
    return jwt.encode({"sub": sub, "aud": AUDIENCE}, None, algorithm="none")


def rsa_pair() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public.decode()


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def hs256_with_key_bytes(key: bytes, sub: str = "alice") -> str:
    """HS256 signed with arbitrary bytes (PyJWT refuses a PEM as an HMAC secret,
    so the HS/RS confusion attack is built by hand)."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": sub, "aud": AUDIENCE, "exp": int(time.time()) + 600}).encode())
    signature = b64(hmac.new(key, header + b"." + body, hashlib.sha256).digest())
    return (header + b"." + body + b"." + signature).decode()
