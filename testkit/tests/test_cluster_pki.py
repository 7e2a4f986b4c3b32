"""The test control plane's PKI and kubeconfigs: client certificates carry the user and groups
Kubernetes reads from them, serving certificates the hosts, and kubeconfigs are self-contained."""

from __future__ import annotations

import base64
import ipaddress
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from grm_testkit.cluster.controlplane import ControlPlaneError, first_service_ip, wait_until
from grm_testkit.cluster.kubeconfig import render_kubeconfig, write_kubeconfig
from grm_testkit.cluster.pki import CertificateAuthority


def test_client_cert_carries_user_and_groups_and_is_signed_by_the_ca() -> None:
    ca = CertificateAuthority()
    pair = ca.client_cert("alice", ("system:masters", "devs"))
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["alice"]
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == ["system:masters", "devs"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    cert.verify_directly_issued_by(ca_cert)
    other = x509.load_pem_x509_certificate(CertificateAuthority().cert_pem)
    with pytest.raises((ValueError, InvalidSignature)):
        cert.verify_directly_issued_by(other)


def test_serving_cert_lists_ips_and_names() -> None:
    pair = CertificateAuthority().serving_cert(("127.0.0.1", "10.96.0.1", "kubernetes.default.svc"))
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.96.0.1"),
    ]
    assert san.get_values_for_type(x509.DNSName) == ["kubernetes.default.svc"]
    with pytest.raises(ValueError):
        CertificateAuthority().serving_cert(())


def test_kubeconfig_is_self_contained_and_private(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    pair = ca.client_cert("bob")
    config = render_kubeconfig(
        "https://127.0.0.1:6443",
        ca_pem=ca.cert_pem,
        user="bob",
        client_cert_pem=pair.cert_pem,
        client_key_pem=pair.key_pem,
        namespace="ns1",
    )
    path = write_kubeconfig(tmp_path / "kc.yaml", config)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = yaml.safe_load(path.read_text())
    cluster = loaded["clusters"][0]["cluster"]
    assert base64.b64decode(cluster["certificate-authority-data"]) == ca.cert_pem
    assert base64.b64decode(loaded["users"][0]["user"]["client-key-data"]) == pair.key_pem
    assert loaded["contexts"][0]["context"] == {"cluster": "grm-test", "user": "bob", "namespace": "ns1"}
    with pytest.raises(ValueError):
        render_kubeconfig("https://x", ca_pem=None, user="u", client_cert_pem=b"c")


def test_first_service_ip() -> None:
    assert first_service_ip("10.0.0.0/24") == "10.0.0.1"
    assert first_service_ip("10.96.0.0/12") == "10.96.0.1"


def test_wait_until_polls_then_times_out_or_aborts() -> None:
    calls = iter([False, False, True])
    assert wait_until(lambda: next(calls), 5, "thing", interval_s=0.001) >= 0
    with pytest.raises(ControlPlaneError, match="not ready after"):
        wait_until(lambda: False, 0.05, "never", interval_s=0.001)
    with pytest.raises(ControlPlaneError, match="died: exit 3"):
        wait_until(lambda: False, 60, "died", abort=lambda: "exit 3", interval_s=0.001)
