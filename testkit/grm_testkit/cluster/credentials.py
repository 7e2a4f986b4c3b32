"""The credentials of a test control plane: the PKI it runs on and the identities it hands out.

One CA signs the API server's serving certificate and every client certificate (Kubernetes maps a
client certificate's CN to the user name and its O fields to groups); an ECDSA key signs
service-account tokens; the admin is a client certificate in group `system:masters` (the keys
are made by `pki`). Their files live in the control plane's work dir (`pki/`, readable by the
owner only), beside the kubeconfigs written for users, nodes and service accounts
(`kubeconfigs/`).

A service account's bound token can only come from the running API server (TokenRequest), so
`ControlPlane.service_account_token` asks for it and this module turns it into a kubeconfig; the
processes that present and check these credentials are started in `controlplane`.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from grm_testkit.cluster import pki
from grm_testkit.cluster.kubeconfig import render_kubeconfig, write_kubeconfig

# Names every in-cluster client may use for the API server, as kubeadm puts them in its cert.
IN_CLUSTER_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass
class ControlPlaneCredentials:
    """The key pairs of one control plane run, their files (`files["ca.crt"]`, ...) and the
    kubeconfigs, serving certificates and TLS contexts made from them."""

    # The control plane's work dir: `pki/` and `kubeconfigs/` are made under it.
    directory: Path
    ca: pki.CertificateAuthority
    serving: pki.KeyPair
    service_account: pki.KeyPair
    admin: pki.KeyPair
    files: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def create(cls, directory: Path, hosts: Iterable[str]) -> ControlPlaneCredentials:
        """A fresh PKI whose API server certificate names `hosts` and the in-cluster names,
        written to `directory/pki`."""
        ca = pki.CertificateAuthority()
        serving = ca.serving_cert((*hosts, *IN_CLUSTER_NAMES))
        creds = cls(
            directory=directory,
            ca=ca,
            serving=serving,
            service_account=pki.service_account_signing_key(),
            admin=ca.client_cert("admin", ("system:masters",)),
        )
        pki_dir = directory / "pki"
        pki_dir.mkdir()
        for name, data in (
            ("ca.crt", ca.cert_pem),
            ("ca.key", ca.key_pem),
            ("apiserver.crt", serving.cert_pem),
            ("apiserver.key", serving.key_pem),
            ("sa.pub", creds.service_account.cert_pem),
            ("sa.key", creds.service_account.key_pem),
            ("admin.crt", creds.admin.cert_pem),
            ("admin.key", creds.admin.key_pem),
        ):
            creds.files[name] = write_private(pki_dir / name, data)
        return creds

    def admin_kubeconfig(self, server: str) -> Path:
        """The admin's kubeconfig (`kubeconfigs/admin.yaml`) for the API server at `server`."""
        return write_kubeconfig(
            self.directory / "kubeconfigs" / "admin.yaml",
            render_kubeconfig(
                server,
                ca_pem=self.ca.cert_pem,
                user="admin",
                client_cert_pem=self.admin.cert_pem,
                client_key_pem=self.admin.key_pem,
            ),
        )

    def kubeconfig_for_user(
        self, server: str, user: str, groups: tuple[str, ...] = (), path: Path | None = None
    ) -> Path:
        """A kubeconfig authenticating as `user` in `groups` by a new client certificate."""
        pair = self.ca.client_cert(user, groups)
        config = render_kubeconfig(
            server,
            ca_pem=self.ca.cert_pem,
            user=user,
            client_cert_pem=pair.cert_pem,
            client_key_pem=pair.key_pem,
        )
        target = path or self.directory / "kubeconfigs" / f"user-{file_safe(user)}.yaml"
        return write_kubeconfig(target, config)

    def kubeconfig_for_node(self, server: str, node: str, path: Path | None = None) -> Path:
        """A kubelet's kubeconfig: user `system:node:<node>` in group `system:nodes`."""
        target = path or self.directory / "kubeconfigs" / f"node-{file_safe(node)}.yaml"
        return self.kubeconfig_for_user(server, f"system:node:{node}", ("system:nodes",), target)

    def kubeconfig_for_service_account(
        self, server: str, namespace: str, name: str, token: str, path: Path | None = None
    ) -> Path:
        """A kubeconfig presenting `token`, a bound token of ServiceAccount `namespace/name`
        (user `system:serviceaccount:<namespace>:<name>`), default namespace `namespace`."""
        config = render_kubeconfig(
            server,
            ca_pem=self.ca.cert_pem,
            user=f"system:serviceaccount:{namespace}:{name}",
            token=token,
            namespace=namespace,
        )
        target = path or self.directory / "kubeconfigs" / f"sa-{file_safe(namespace)}-{file_safe(name)}.yaml"
        return write_kubeconfig(target, config)

    def serving_cert(self, hosts: tuple[str, ...]) -> pki.KeyPair:
        """A TLS serving certificate signed by the CA (e.g. for a proxy or a kubelet API)."""
        return self.ca.serving_cert(hosts, common_name="grm-test-server")

    def ssl_context(self, client: pki.KeyPair | None = None) -> ssl.SSLContext:
        """A TLS context trusting the CA, presenting `client` (default: the admin)."""
        ctx = ssl.create_default_context(cadata=self.ca.cert_pem.decode("ascii"))
        pair = client or self.admin
        if pair is self.admin:
            ctx.load_cert_chain(self.files["admin.crt"], self.files["admin.key"])
        else:
            cert = self.directory / "tmp-client.crt"
            key = self.directory / "tmp-client.key"
            write_private(cert, pair.cert_pem)
            write_private(key, pair.key_pem)
            ctx.load_cert_chain(cert, key)
            cert.unlink()
            key.unlink()
        return ctx


def file_safe(text: str) -> str:
    """`text` with every character but letters, digits and `-_.` replaced, for a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def write_private(path: Path, data: bytes) -> Path:
    """Writes `data` to `path` readable by its owner only (keys, certificates)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path
