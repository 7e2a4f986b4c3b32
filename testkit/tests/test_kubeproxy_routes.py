"""`kubeproxy.routed_endpoints`: where kube-proxy's nftables table sends a Service port's new
connections, read from `nft list table ip kube-proxy` as kube-proxy v1.35 writes it."""

from __future__ import annotations

from grm_testkit.cluster.kubeproxy import routed_endpoints

# Trimmed from a local cluster: two Services whose names share a prefix (the operator's
# `<name>` and `<name>-reference`), the first with two endpoints, the second with one.
TWO_ENDPOINTS = (
    "numgen random mod 2 vmap { 0 : goto endpoint-PZDMCOTL-rp/w/tcp/http__10.244.0.2/8000, "
    "1 : goto endpoint-Q3OAZZBK-rp/w/tcp/http__10.244.0.3/8000 }"
)
TABLE = f"""table ip kube-proxy {{
    map service-ips {{
        type ipv4_addr . inet_proto . inet_service : verdict
        elements = {{ 10.101.108.93 . tcp . 8000 : goto service-IGFA5YEN-rp/w/tcp/http,
                 10.96.0.1 . tcp . 443 : goto service-2QRHZV4L-default/kubernetes/tcp/https }}
    }}
    chain endpoint-PZDMCOTL-rp/w/tcp/http__10.244.0.2/8000 {{
        ip saddr 10.244.0.2 jump mark-for-masquerade
        meta l4proto tcp dnat to 10.244.0.2:8000
    }}
    chain service-IGFA5YEN-rp/w/tcp/http {{
        ip daddr 10.101.108.93 ip saddr != 10.244.0.0/16 jump mark-for-masquerade
        {TWO_ENDPOINTS}
    }}
    chain service-AAAAAAAA-rp/w-reference/tcp/http {{
        ip daddr 10.101.0.7 ip saddr != 10.244.0.0/16 jump mark-for-masquerade
        numgen random mod 1 vmap {{ 0 : goto endpoint-BBBBBBBB-rp/w-reference/tcp/http__10.244.0.9/8000 }}
    }}
    chain service-CCCCCCCC-rp/unnamed/tcp/ {{
        numgen random mod 1 vmap {{ 0 : goto endpoint-DDDDDDDD-rp/unnamed/tcp/__10.244.0.4/80 }}
    }}
}}
"""


def test_the_service_chains_endpoints_only() -> None:
    assert routed_endpoints(TABLE, "rp", "w", "http") == {"10.244.0.2", "10.244.0.3"}
    assert routed_endpoints(TABLE, "rp", "w-reference", "http") == {"10.244.0.9"}


def test_an_unnamed_port_and_a_service_without_chain() -> None:
    assert routed_endpoints(TABLE, "rp", "unnamed", "") == {"10.244.0.4"}
    # No chain yet (no ready endpoint: kube-proxy rejects the connection), or another port name.
    assert routed_endpoints(TABLE, "rp", "absent", "http") == set()
    assert routed_endpoints(TABLE, "rp", "w", "metrics") == set()
    assert routed_endpoints("", "rp", "w", "http") == set()
