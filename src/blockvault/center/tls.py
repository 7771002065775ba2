"""The center's certificate as agents pin it.

A fingerprint is ``SHA256:`` and the unpadded base64 of the SHA-256 of the
certificate's DER bytes (the form OpenSSH prints for host keys): ``center init``
prints it, ``agent enrol --fingerprint`` takes it, and the agent trusts no other
certificate afterwards, whoever signed it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from blockvault.errors import CenterStateError

__all__ = ["fingerprint", "pem_fingerprint", "same_fingerprint", "self_signed"]


def fingerprint(der: bytes) -> str:
    digest = hashlib.sha256(der).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def same_fingerprint(der: bytes, expected: str) -> bool:
    return hmac.compare_digest(fingerprint(der), expected.strip())


def self_signed(names: list[str], *, days: int = 3650) -> tuple[bytes, bytes]:
    """A new self-signed certificate and its key (both PEM) for the center: EC P-256,
    every name in ``names`` as a subject alternative name (IP addresses as IPs). Agents
    pin it by fingerprint, so no authority needs to vouch for it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    start = datetime.now(UTC) - timedelta(minutes=5)  # a client's clock a little behind
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def pem_fingerprint(pem: bytes) -> str:
    """The fingerprint of the first certificate in ``pem`` (a chain's leaf)."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise CenterStateError(f"not a PEM certificate ({exc})", path="certificate") from None
    return fingerprint(certificate.public_bytes(serialization.Encoding.DER))


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)
