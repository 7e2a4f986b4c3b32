"""Operator settings from GRM_* environment variables, and the `run` command's flags on top."""

from __future__ import annotations

import argparse

import kopf
import pytest

from grm_operator.handlers.runtime import add_arguments, kopf_settings, settings_from_args
from grm_operator.settings import DEFAULT_WORKER_IMAGE, OperatorSettings, SettingsError


def test_defaults() -> None:
    s = OperatorSettings.from_env({})
    assert s.clusterwide and s.leader_election_lease is None
    assert s.worker_image == DEFAULT_WORKER_IMAGE
    assert (s.health_port, s.metrics_port) == (8080, 9090)


def test_environment_values_are_parsed() -> None:
    s = OperatorSettings.from_env(
        {
            "GRM_NAMESPACES": "rl, serving ,",
            "GRM_LEADER_ELECTION_LEASE": "grm",
            "GRM_LEASE_DURATION_S": "30",
            "GRM_PODMONITOR_ENABLED": "false",
            "GRM_REQUEST_TIMEOUT_S": "2.5",
            "GRM_UNRELATED": "ignored",
            "HOME": "/root",
        }
    )
    assert s.namespaces == ("rl", "serving")
    assert not s.clusterwide
    assert (s.leader_election_lease, s.lease_duration_s) == ("grm", 30.0)
    assert s.podmonitor_enabled is False
    assert s.request_timeout_s == 2.5


def test_a_bad_value_names_its_variable() -> None:
    with pytest.raises(SettingsError, match="GRM_HEALTH_PORT"):
        OperatorSettings.from_env({"GRM_HEALTH_PORT": "http"})
    with pytest.raises(SettingsError, match="GRM_LOG_LEVEL"):
        OperatorSettings.from_env({"GRM_LOG_LEVEL": "LOUD"})


def test_flags_override_the_environment() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--namespace", "a", "--namespace", "b", "--leader-election-lease", "ha", "--metrics-port", "0"]
    )
    s = settings_from_args(
        args, {"GRM_NAMESPACES": "x", "GRM_METRICS_PORT": "1234", "GRM_WORKER_IMAGE": "w:1"}
    )
    assert (s.namespaces, s.leader_election_lease, s.metrics_port, s.worker_image) == (
        ("a", "b"),
        "ha",
        0,
        "w:1",
    )


def test_kopf_settings_follow_ours() -> None:
    ks = kopf_settings(OperatorSettings(leader_election_lease="grm", watch_timeout_s=120))
    # kopf's peering is never used: the Lease decides who runs kopf at all.
    assert ks.peering.standalone is True
    assert ks.posting.enabled is False
    assert ks.watching.server_timeout == 120
    selectors = {str(k.any_name): v for k, v in ks.watching.label_selectors.items()}
    # Every child kind the reconciler watches is filtered server-side (other modules may add more).
    for plural in ("deployments", "configmaps", "services", "poddisruptionbudgets"):
        assert selectors[plural] == "app.kubernetes.io/managed-by=grm-operator"


def test_pod_monitor_labels_are_a_json_object_of_valid_labels() -> None:
    s = OperatorSettings.from_env({"GRM_PODMONITOR_LABELS": '{"release": "kps", "example.com/team": "rl"}'})
    assert s.podmonitor_labels == {"release": "kps", "example.com/team": "rl"}
    assert OperatorSettings.from_env({}).podmonitor_labels == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("release=kps", "JSON object"),
        ('{"release": "not valid!"}', "not a valid label value"),
        ('{"-bad": "x"}', "not a valid label key"),
        ('{"release": 3}', "valid string"),
        # The operator selects its children by these; an installation label may not replace them.
        ('{"app.kubernetes.io/managed-by": "helm"}', "the operator's own"),
        ('{"grm.dev/deployment": "x"}', "the operator's own"),
    ],
)
def test_bad_pod_monitor_labels_name_their_variable(raw: str, message: str) -> None:
    with pytest.raises(SettingsError, match="GRM_PODMONITOR_LABELS") as exc:
        OperatorSettings.from_env({"GRM_PODMONITOR_LABELS": raw})
    assert message in str(exc.value)


def test_leader_election_settings_and_timing_order() -> None:
    settings = OperatorSettings.from_env(
        {"GRM_LEADER_ELECTION_LEASE": "grm-operator", "GRM_LEADER_ELECTION_NAMESPACE": "ops"}
    )
    assert (settings.leader_election_lease, settings.leader_election_namespace) == ("grm-operator", "ops")
    # client-go's defaults.
    assert (settings.lease_duration_s, settings.lease_renew_deadline_s, settings.lease_retry_period_s) == (
        15.0,
        10.0,
        2.0,
    )
    # A renew deadline as long as the lease would let a new leader act before the old one stops.
    with pytest.raises(SettingsError, match="GRM_LEASE_RENEW_DEADLINE_S < GRM_LEASE_DURATION_S"):
        OperatorSettings.from_env({"GRM_LEASE_DURATION_S": "10", "GRM_LEASE_RENEW_DEADLINE_S": "10"})
    with pytest.raises(SettingsError, match="GRM_LEADER_ELECTION_LEASE"):
        OperatorSettings.from_env({"GRM_LEADER_ELECTION_LEASE": "Not A Name"})


def test_kopf_gets_an_identity_so_it_never_asks_the_passwd_database() -> None:
    """The chart runs the operator as uid 65532, which has no passwd entry in the image: kopf's
    default identity (`getpass.getuser()`) would raise KeyError there and crash the operator."""
    from grm_operator.handlers import runtime

    settings = OperatorSettings.from_env({})
    registry, ks = kopf.OperatorRegistry(), kopf.OperatorSettings()
    args = runtime._kopf_arguments(settings, registry, ks, None, "pod-1_ab")
    assert args["identity"] == "pod-1_ab"
