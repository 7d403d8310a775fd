"""The bus's TLS: a CA of the stack's own and the server certificate it signs.

Every connection to the bus speaks TLS. `virtbus up` makes a CA on its first run (kept in the data
dir and reused), so clients verify the server against `tls/ca.pem` instead of trusting whatever
answers on the port. Client certificates (mutual TLS) can be issued from the same CA.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_CA_DAYS = 3650
_LEAF_DAYS = 825  # the longest life browsers and Go's TLS accept for a leaf


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _window(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    return Issued(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )  # fmt: skip


def new_ca(common_name: str = "virtbus bus CA") -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _window(_CA_DAYS)
    usage = x509.KeyUsage(
        digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
        key_encipherment=False, data_encipherment=False, key_agreement=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return _pem(cert, key)


def issue(
    ca: Issued, common_name: str, *, hosts: tuple[str, ...] = (), client: bool = False,
    route: bool = False,
) -> Issued:  # fmt: skip
    """A leaf signed by `ca`: a server certificate for `hosts` (DNS names or IP addresses), a
    client certificate whose email SAN `common_name` NATS maps to a user (`verify_and_map`), or a
    `route` certificate, both at once: a cluster's servers dial each other and verify both ways."""
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _window(_LEAF_DAYS)
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    if client:
        names.append(x509.RFC822Name(common_name))
    eku = [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
    if route:
        eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    return _pem(cert, key)


CLIENT_DOMAIN = "virtbus"  # a client certificate names its user `<name>@virtbus`


def certified_name(cert_pem: bytes) -> str | None:
    """The user a client certificate of `issue(..., client=True)` names: the part before
    `@virtbus` of its one email SAN (None: no such SAN, or several, or not a certificate)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    named = [e.rpartition("@")[0] for e in sans.get_values_for_type(x509.RFC822Name)
             if e.rpartition("@")[2] == CLIENT_DOMAIN]  # fmt: skip
    return named[0] if len(named) == 1 else None
