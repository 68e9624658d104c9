"""The engines' CA: certificate fields, SANs, key usages, file modes, and that re-running changes nothing."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from control_plane.pki import (
    EngineTLS,
    PKIError,
    client_cert,
    credential_set,
    engine_cert,
    init_ca,
    install_credential_set,
    main,
)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_the_ca_is_a_p256_ca_with_a_private_key(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "pki")
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey) and ca.key.curve.name == "secp256r1"
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert _mode(tmp_path / "pki") == 0o700
    assert _mode(tmp_path / "pki" / "ca.key") == 0o600


def test_init_twice_reuses_the_ca(tmp_path: Path) -> None:
    first = init_ca(tmp_path)
    key_bytes = (tmp_path / "ca.key").read_bytes()
    second = init_ca(tmp_path)
    assert second.cert == first.cert
    assert (tmp_path / "ca.key").read_bytes() == key_bytes


def test_half_a_ca_is_refused_not_replaced(tmp_path: Path) -> None:
    init_ca(tmp_path)
    (tmp_path / "ca.key").unlink()
    with pytest.raises(PKIError):
        init_ca(tmp_path)


def test_engine_certificate_is_for_server_auth_on_its_addresses(tmp_path: Path) -> None:
    ca = init_ca(tmp_path)
    files = engine_cert(ca, "node-a", ["10.99.0.11", "fd00::11"], ["node-a.example"])
    cert = _cert(files.cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.99.0.11"),
        ipaddress.ip_address("fd00::11"),
    ]
    assert sans.get_values_for_type(x509.DNSName) == ["node-a.example"]
    assert _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca.cert)
    assert files.ca.read_bytes() == ca.cert_path.read_bytes()
    assert _mode(files.key) == 0o600 and _mode(files.cert.parent) == 0o700 and _mode(tmp_path / "engines") == 0o700


def test_client_certificate_is_for_client_auth_only(tmp_path: Path) -> None:
    ca = init_ca(tmp_path)
    files = client_cert(ca, "control-plane")
    cert = _cert(files.cert)
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    cert.verify_directly_issued_by(ca.cert)
    assert files == EngineTLS.from_dir(tmp_path / "clients" / "control-plane") and not files.missing()
    assert _mode(files.key) == 0o600


def test_issuing_again_reuses_the_certificate_unless_the_names_changed(tmp_path: Path) -> None:
    ca = init_ca(tmp_path)
    first = engine_cert(ca, "node-a", ["10.99.0.11"]).cert.read_bytes()
    assert engine_cert(init_ca(tmp_path), "node-a", ["10.99.0.11"]).cert.read_bytes() == first
    moved = _cert(engine_cert(ca, "node-a", ["10.99.0.21"]).cert)
    assert moved.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.IPAddress
    ) == [ipaddress.ip_address("10.99.0.21")]
    client = client_cert(ca, "cp").cert.read_bytes()
    assert client_cert(ca, "cp").cert.read_bytes() == client


def test_a_certificate_from_another_ca_is_reissued(tmp_path: Path) -> None:
    files = engine_cert(init_ca(tmp_path / "one"), "node-a", ["10.0.0.1"])
    other = init_ca(tmp_path / "two")
    (tmp_path / "two" / "engines" / "node-a").mkdir(parents=True)
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / "two" / "engines" / "node-a" / name).write_bytes((files.cert.parent / name).read_bytes())
    reissued = engine_cert(other, "node-a", ["10.0.0.1"])
    _cert(reissued.cert).verify_directly_issued_by(other.cert)


@pytest.mark.parametrize("name", ["../x", "a/b", "", "UPPER", "x" * 41])
def test_names_are_dns_labels_never_paths(tmp_path: Path, name: str) -> None:
    ca = init_ca(tmp_path)
    with pytest.raises(PKIError):
        client_cert(ca, name)
    with pytest.raises(PKIError):
        credential_set(tmp_path, name)


def test_an_engine_certificate_needs_a_name(tmp_path: Path) -> None:
    with pytest.raises(PKIError):
        engine_cert(init_ca(tmp_path), "node-a")


def test_installed_credential_sets_are_found_by_name(tmp_path: Path) -> None:
    source = client_cert(init_ca(tmp_path / "bed"), "testbed")
    installed = install_credential_set(tmp_path / "plane", "testbed", source)
    assert installed == credential_set(tmp_path / "plane", "testbed")
    assert installed.key.read_bytes() == source.key.read_bytes() and _mode(installed.key) == 0o600
    assert credential_set(tmp_path, None) is None


def test_openssl_agrees(tmp_path: Path) -> None:
    ca = init_ca(tmp_path)
    server, client = engine_cert(ca, "n", ["10.0.0.1"]), client_cert(ca, "c")
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca.cert_path), str(server.cert), str(client.cert)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_module_runs_as_a_helper(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["init", "--dir", str(tmp_path)])
    main(["engine", "--dir", str(tmp_path), "node-a", "--ip", "10.0.0.1"])
    main(["client", "--dir", str(tmp_path), "cp"])
    out = capsys.readouterr().out
    assert str(tmp_path / "engines" / "node-a" / "cert.pem") in out and str(tmp_path / "clients" / "cp") in out
    with pytest.raises(SystemExit):
        main(["engine", "--dir", str(tmp_path), "node-b"])  # no SAN
