"""The real-cluster handle of the e2e suite's `--real-cluster` mode: when it refuses to run, how it
finds `kubectl proxy`'s port and spells service-proxy paths, and its process and HTTP handling
against a stand-in `kubectl` (a script whose `proxy` serves loopback HTTP and prints kubectl's
banner). The real kubectl against a real API server is e2e/test_real_cluster_mode.py."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from grm_testkit.cluster import realcluster
from grm_testkit.cluster.realcluster import (
    RealCluster,
    RealClusterError,
    kubeconfig_from_env,
    parse_proxy_banner,
    service_proxy_path,
)


def test_kubeconfig_must_be_set_and_name_an_existing_file(tmp_path: Path) -> None:
    config = tmp_path / "config"
    assert kubeconfig_from_env({}) is None
    assert kubeconfig_from_env({"KUBECONFIG": "  "}) is None
    assert kubeconfig_from_env({"KUBECONFIG": str(tmp_path / "absent")}) is None
    config.write_text("apiVersion: v1\n")
    merged = f"{tmp_path / 'absent'}{os.pathsep}{config}"
    assert kubeconfig_from_env({"KUBECONFIG": merged}) == merged


def test_unavailable_says_why(tmp_path: Path) -> None:
    why = realcluster.unavailable({})
    assert why is not None and "KUBECONFIG" in why
    why = realcluster.unavailable({"KUBECONFIG": str(tmp_path / "absent")})
    assert why is not None and "no existing file" in why


def test_proxy_banner_gives_the_port() -> None:
    assert parse_proxy_banner("Starting to serve on 127.0.0.1:41857\n") == ("127.0.0.1", 41857)
    assert parse_proxy_banner("W1126 warning\nStarting to serve on [::1]:8001\n") == ("::1", 8001)
    assert parse_proxy_banner("W1126 some warning line\n") is None
    assert parse_proxy_banner("Starting to serve on 127.0.0.1:") is None


def test_service_proxy_paths() -> None:
    assert service_proxy_path("rl", "reward", 8000) == "/api/v1/namespaces/rl/services/reward:8000/proxy"
    assert service_proxy_path("rl", "reward", "http") == "/api/v1/namespaces/rl/services/reward:http/proxy"
    assert (
        service_proxy_path("rl", "reward", 8443, "https")
        == "/api/v1/namespaces/rl/services/https:reward:8443/proxy"
    )
    with pytest.raises(ValueError, match="http or https"):
        service_proxy_path("rl", "reward", 8000, "grpc")


FAKE_KUBECTL = textwrap.dedent(
    """\
    import http.server, json, os, sys

    if sys.argv[1:2] == ["proxy"]:
        if os.environ.get("FAKE_PROXY_FAILS"):
            print("error: unable to load kubeconfig", flush=True)
            sys.exit(1)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                status = 404 if self.path.startswith("/missing") else 200
                body = json.dumps({"path": self.path, "kubeconfig": os.environ["KUBECONFIG"]}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        print("Starting to serve on 127.0.0.1:%d" % server.server_port, flush=True)
        server.serve_forever()
    print(json.dumps(sys.argv[1:]))
    sys.exit(3 if "fail" in sys.argv else 0)
    """
)


@pytest.fixture
def fake_kubectl(tmp_path: Path) -> str:
    script = tmp_path / "kubectl"
    script.write_text(f"#!{sys.executable}\n{FAKE_KUBECTL}")
    script.chmod(0o755)
    return str(script)


def test_handle_runs_kubectl_proxy_and_reaches_the_api_through_it(tmp_path: Path, fake_kubectl: str) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text("apiVersion: v1\n")
    cluster = RealCluster(str(config), kubectl=fake_kubectl, helm=fake_kubectl)
    with cluster:
        assert cluster.proxy_url.startswith("http://127.0.0.1:")
        body = cluster.get("/api/v1/namespaces/rl/pods")
        assert body == {"path": "/api/v1/namespaces/rl/pods", "kubeconfig": str(config)}
        status, _ = cluster.api("GET", "/missing")
        assert status == 404
        with pytest.raises(RealClusterError, match="GET /missing: 404"):
            cluster.get("/missing")
        url = cluster.service_url("rl", "reward", 8000, routed=False)
        assert url == cluster.proxy_url + "/api/v1/namespaces/rl/services/reward:8000/proxy"
        assert cluster.kubectl("get", "pods").stdout.strip() == '["get", "pods"]'
        assert cluster.helm("status", "grm", "fail", check=False).returncode == 3
        with pytest.raises(RealClusterError, match="exited 3"):
            cluster.kubectl("apply", "fail")
        proxy = cluster.proxy
        assert proxy is not None and proxy.poll() is None
    assert proxy.poll() is not None, "stop() left kubectl proxy running"
    with pytest.raises(RealClusterError, match="not started"):
        _ = cluster.proxy_url


def test_handle_start_fails_with_the_proxy_output(
    tmp_path: Path, fake_kubectl: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text("apiVersion: v1\n")
    monkeypatch.setenv("FAKE_PROXY_FAILS", "1")
    with pytest.raises(RealClusterError, match="unable to load kubeconfig"):
        RealCluster(str(config), kubectl=fake_kubectl, start_timeout_s=10).start()


def test_handle_refuses_without_a_kubeconfig(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    with pytest.raises(RealClusterError, match="KUBECONFIG"):
        RealCluster()
