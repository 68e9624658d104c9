"""A small certificate authority for node engines: mutual TLS between the control plane and every dockerd.

One directory holds it all, in Docker's own file names so each part can be handed to dockerd or the docker CLI
(`DOCKER_CERT_PATH`) as it is:

    DIR/ca.pem, DIR/ca.key                      the CA (ECDSA P-256, 10 years)
    DIR/engines/NAME/{ca,cert,key}.pem          an engine's server certificate (serverAuth, SAN = its IPs/DNS names)
    DIR/clients/NAME/{ca,cert,key}.pem          a client credential set (clientAuth): what the control plane presents

Directories are 0700 and keys 0600, created so (never widened afterwards by a chmod race). Every function here is
idempotent: running it again reuses what exists (the CA above all: a new CA would orphan every engine that trusts
the old one), so `init`/`engine`/`client` can be re-run by setup scripts and test beds without breaking a fleet.

    python -m control_plane.pki init   --dir DIR
    python -m control_plane.pki engine --dir DIR NAME --ip 10.99.0.11 [--dns node-a.example]
    python -m control_plane.pki client --dir DIR NAME
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # at run time each function that makes or reads a certificate imports what it needs: `cryptography`
    # is ~0.17 s of every control plane's start, and serving needs only the credential files' paths
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "CA",
    "EngineTLS",
    "PKIError",
    "client_cert",
    "credential_set",
    "engine_cert",
    "init_ca",
    "install_credential_set",
]

CA_DAYS = 3650
LEAF_DAYS = 825
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")  # a DNS label: names become directory names


class PKIError(Exception):
    code = "pki_error"


@dataclass(frozen=True)
class EngineTLS:
    """Client credentials for one engine: the CA that signed its server certificate, our certificate and key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_dir(cls, directory: Path) -> EngineTLS:
        """A credential set in Docker's layout (`ca.pem`, `cert.pem`, `key.pem`), e.g. DIR/clients/NAME."""
        return cls(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")

    def missing(self) -> list[str]:
        """Which of the three files do not exist (their roles, not their paths)."""
        return [role for role, path in (("ca", self.ca), ("cert", self.cert), ("key", self.key)) if not path.is_file()]


@dataclass(frozen=True)
class CA:
    directory: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.pem"


def init_ca(directory: Path, common_name: str = "litefleet engines CA") -> CA:
    """The CA in `directory`, created on first use. Re-running loads the existing one unchanged."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = Path(directory)
    _private_dir(directory)
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PKIError("the CA key is not an ECDSA key")
        return CA(directory, x509.load_pem_x509_certificate(cert_path.read_bytes()), key)
    if cert_path.exists() or key_path.exists():
        raise PKIError("half a CA (one of ca.pem, ca.key) exists: refusing to replace it")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), 0o600)  # the key first: a cert without its key is "half a CA", refused
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return CA(directory, cert, key)


def engine_cert(
    ca: CA, name: str, ips: list[str] | tuple[str, ...] = (), dns: list[str] | tuple[str, ...] = ()
) -> EngineTLS:
    """A server certificate for engine `name` (SAN = `ips` and `dns`, serverAuth) in DIR/engines/NAME.
    Reused when one exists for the same names from this CA; re-issued (same directory) when the names changed."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    addresses = [ipaddress.ip_address(ip) for ip in ips]
    if not addresses and not dns:
        raise PKIError("an engine certificate needs at least one IP address or DNS name")
    sans: list[x509.GeneralName] = [x509.IPAddress(a) for a in addresses] + [x509.DNSName(d) for d in dns]
    return _leaf(ca, "engines", name, ExtendedKeyUsageOID.SERVER_AUTH, sans)


def client_cert(ca: CA, name: str) -> EngineTLS:
    """A client certificate (clientAuth, CN = `name`) in DIR/clients/NAME, with the CA beside it. Reused if there."""
    from cryptography.x509.oid import ExtendedKeyUsageOID

    return _leaf(ca, "clients", name, ExtendedKeyUsageOID.CLIENT_AUTH, [])


def credential_set(directory: Path, name: str | None) -> EngineTLS | None:
    """The client credential set `name` under DIR/clients (None for no name). A name is a DNS label, never a path:
    whoever registers a node cannot point the control plane at arbitrary files."""
    if name is None:
        return None
    if not _NAME.match(name):
        raise PKIError(f"invalid credential set name: {name!r}")
    return EngineTLS.from_dir(Path(directory) / "clients" / name)


def install_credential_set(directory: Path, name: str, source: EngineTLS) -> EngineTLS:
    """Copy client credentials minted elsewhere (another CA: a test bed's, an operator's) into DIR/clients/NAME,
    where `credential_set` finds them. Re-running rewrites the same three files with the same content."""
    target = credential_set(directory, name)
    assert target is not None
    _private_dir(Path(directory))
    _private_dir(Path(directory) / "clients")
    _private_dir(target.cert.parent)
    for src, dst, mode in (
        (source.ca, target.ca, 0o644),
        (source.cert, target.cert, 0o644),
        (source.key, target.key, 0o600),
    ):
        _write(dst, src.read_bytes(), mode)
    return target


def _leaf(ca: CA, kind: str, name: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> EngineTLS:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if not _NAME.match(name):
        raise PKIError(f"invalid {kind[:-1]} name (a DNS label of up to 40 characters): {name!r}")
    directory = ca.directory / kind / name
    _private_dir(ca.directory / kind)
    _private_dir(directory)
    files = EngineTLS.from_dir(directory)
    if not files.missing() and _still_valid(files, ca, sans):
        return files
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    _write(files.key, _key_pem(key), 0o600)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(files.ca, ca.cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def _still_valid(files: EngineTLS, ca: CA, sans: list[x509.GeneralName]) -> bool:
    """True when the existing certificate was issued by this CA, for these names, and is not about to expire."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if cert.not_valid_after_utc - _now() < datetime.timedelta(days=30):
        return False
    try:
        existing = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        existing = []
    return sorted(map(repr, existing)) == sorted(map(repr, sans)) and files.ca.read_bytes() == ca.cert.public_bytes(
        serialization.Encoding.PEM
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _private_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write via a temp file created with `mode` (a key is never readable by others, even for a moment), then
    rename over `path`: a crash leaves the old file or the new one, not half of one."""
    temp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(temp, mode)  # in case the umask took bits away we wanted (0644 for certificates)
    os.replace(temp, path)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m control_plane.pki", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["init", "engine", "client"])
    parser.add_argument("name", nargs="?", help="engine or client name (a DNS label)")
    parser.add_argument("--dir", type=Path, required=True, help="the CA directory (created 0700)")
    parser.add_argument("--ip", action="append", default=[], help="engine certificate: an IP SAN (repeatable)")
    parser.add_argument("--dns", action="append", default=[], help="engine certificate: a DNS SAN (repeatable)")
    args = parser.parse_intermixed_args(argv)
    try:
        ca = init_ca(args.dir)
        if args.command == "init":
            print(json.dumps({"ca": str(ca.cert_path)}))
            return
        if not args.name:
            parser.error(f"{args.command} needs a NAME")
        if args.command == "engine":
            files = engine_cert(ca, args.name, args.ip, args.dns)
        else:
            files = client_cert(ca, args.name)
    except (PKIError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(json.dumps({"ca": str(files.ca), "cert": str(files.cert), "key": str(files.key)}))


if __name__ == "__main__":
    main()
