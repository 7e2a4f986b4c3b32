"""`grm-local-cluster up|down|status|shell|exec`: the local cluster from a terminal.

    grm-local-cluster up --gpus 8          # foreground; Ctrl-C stops and cleans up
    grm-local-cluster up --detach          # background; returns once the cluster is ready
    grm-local-cluster shell                # a shell inside, KUBECONFIG set, kubectl/helm on PATH
    grm-local-cluster exec -- kubectl get pods -A
    grm-local-cluster status
    grm-local-cluster down

The running cluster is found through its state directory (default
`$XDG_RUNTIME_DIR/grm-local-cluster-<uid>`, else `/tmp/grm-local-cluster-<uid>`; `--state-dir`).
Follows the subcommand convention of `grm_operator.handlers.runtime`: `add_arguments(parser)` and
`command(args) -> int`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from grm_testkit.cluster import netns, tools
from grm_testkit.cluster.clusteroptions import ClusterOptions, default_state_dir, read_state, tool_path
from grm_testkit.cluster.localcluster import LocalCluster
from grm_testkit.cluster.supervisor import prepare_state_dir, supervisor_argv

HELP = "run the whole system on this machine in a network namespace of its own (tests, demo)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lc_command", required=True)
    up = sub.add_parser("up", help="start the local cluster")
    up.add_argument("--gpus", type=int, default=8, help="nvidia.com/gpu capacity in total (the GPU budget)")
    up.add_argument("--nodes", type=int, default=1, help="nodes the GPUs are spread over")
    up.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    up.add_argument("--scrape-interval", type=float, default=2.0, help="Prometheus scrape interval, s")
    up.add_argument("--detach", action="store_true", help="run in the background; return once ready")
    up.add_argument("--timeout", type=float, default=300.0, help="--detach: seconds to wait for ready")
    up.add_argument("--log-level", default="INFO")
    down = sub.add_parser("down", help="stop the local cluster and clean up")
    down.add_argument("--timeout", type=float, default=60.0)
    sub.add_parser("status", help="show the running cluster")
    sub.add_parser("shell", help="an interactive shell inside the cluster's network namespace")
    ex = sub.add_parser("exec", help="run a command inside: exec -- CMD ARGS")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    for each in sub.choices.values():
        each.add_argument(
            "--state-dir", type=Path, default=None, help="where the running cluster's state lives"
        )


def _inside_env(state: dict[str, object]) -> dict[str, str]:
    env = {
        **os.environ,
        "KUBECONFIG": str(state["kubeconfig"]),
        "PATH": tool_path(),
        "GRM_LOCAL_CLUSTER": "1",
    }
    if state.get("prometheus_url"):
        env["GRM_LOCAL_PROMETHEUS_URL"] = str(state["prometheus_url"])
    return env


def _require(state_dir: Path) -> dict[str, object]:
    state = read_state(state_dir)
    if state is None:
        raise SystemExit(f"no local cluster is running (state dir {state_dir}); start one with `up`")
    return state


def _up(args: argparse.Namespace, state_dir: Path) -> int:
    if read_state(state_dir) is not None:
        print(f"a local cluster is already running (state dir {state_dir})", file=sys.stderr)
        return 1
    why = LocalCluster.unavailable()
    if why is not None:
        print(why, file=sys.stderr)
        return 2
    options = ClusterOptions(
        gpus=args.gpus,
        nodes=args.nodes,
        prometheus=False if args.no_prometheus else None,
        scrape_interval_s=args.scrape_interval,
        log_level=args.log_level,
    )
    prepare_state_dir(state_dir, options)
    argv = supervisor_argv(state_dir)
    env = {**os.environ, "PATH": tool_path()}
    if not args.detach:
        os.execvpe(argv[0], argv, env)
    with (state_dir / "supervisor.log").open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + args.timeout
    while (state := read_state(state_dir)) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            print(f"the local cluster did not start; see {state_dir / 'supervisor.log'}", file=sys.stderr)
            if proc.poll() is None:
                proc.terminate()
            return 1
        time.sleep(0.2)
    print(f"local cluster up (pid {state['pid']}, {state['started_s']} s); state in {state_dir}")
    print(f"  grm-local-cluster shell{_dir_flag(args)}    # kubectl and helm inside")
    print(f"  grm-local-cluster down{_dir_flag(args)}")
    return 0


def _dir_flag(args: argparse.Namespace) -> str:
    return f" --state-dir {args.state_dir}" if args.state_dir else ""


def _down(args: argparse.Namespace, state_dir: Path) -> int:
    state = read_state(state_dir)
    if state is None:
        print("no local cluster is running")
        return 0
    pid = int(str(state["pid"]))
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)
        print(f"supervisor {pid} did not stop within {args.timeout:.0f} s; killed", file=sys.stderr)
        return 1
    print("local cluster stopped")
    return 0


def _status(state_dir: Path) -> int:
    state = read_state(state_dir)
    if state is None:
        print("no local cluster is running")
        return 1
    print(json.dumps(state, indent=1))
    kubectl = tools.kubectl()
    if kubectl is not None:
        argv = netns.nsenter_argv(
            int(str(state["pid"])), [str(kubectl), "get", "nodes,pods", "-A", "-o", "wide"]
        )
        subprocess.run(argv, env=_inside_env(state), check=False)
    return 0


def command(args: argparse.Namespace) -> int:
    """Runs one `grm-local-cluster` verb."""
    state_dir: Path = args.state_dir or default_state_dir()
    if args.lc_command == "up":
        return _up(args, state_dir)
    if args.lc_command == "down":
        return _down(args, state_dir)
    if args.lc_command == "status":
        return _status(state_dir)
    state = _require(state_dir)
    pid = int(str(state["pid"]))
    root = bool(state.get("root", netns.is_root()))
    if args.lc_command == "shell":
        shell = os.environ.get("SHELL") or "/bin/bash"
        argv = netns.nsenter_argv(pid, [shell, "-i"], root=root)
        print("inside the local cluster: KUBECONFIG is set, kubectl and helm are on PATH; exit to leave")
        os.execvpe(argv[0], argv, _inside_env(state))
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("exec needs a command: exec -- CMD ARGS", file=sys.stderr)
        return 2
    return subprocess.run(
        netns.nsenter_argv(pid, cmd, root=root), env=_inside_env(state), check=False
    ).returncode


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `grm-local-cluster` console script (and `python -m`)."""
    parser = argparse.ArgumentParser(prog="grm-local-cluster", description=HELP)
    add_arguments(parser)
    return command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
