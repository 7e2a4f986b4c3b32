"""A real Kubernetes node inside the local cluster's network namespace: the upstream kubelet
(built by `make control-plane` from the control plane's `k8s.io/kubernetes` version) with Debian's
containerd 1.6, runc and CNI plugins (bridge + host-local + loopback), images built on this
machine and imported into containerd — nothing is pulled from a registry.

Every node of the local cluster (`LocalCluster`, `grm-local-cluster up`) is one. Every setting
below failed first on this VM (docs/local-cluster.md, "A real node" lists them with the reasons):

* containerd's CRI: `default_runtime_name = "runc"` with `io.containerd.runc.v2`,
  `SystemdCgroup = false`, and `restrict_oom_score_adj = true` — the VM drops CAP_SYS_RESOURCE,
  so nothing may lower `oom_score_adj` (runc otherwise dies with "can't get final child's PID
  from pipe"); root, state, runc root, socket and CNI state all under the node's directory, so
  clusters side by side share nothing;
* the sandbox ("pause") image blocks until SIGTERM (`hack/k8s/cmd/pause`, a static binary);
* images are imported under the name CRI normalises them to (`docker.io/local/NAME:TAG`) in
  containerd's `k8s.io` namespace; pods use `imagePullPolicy: Never` or `IfNotPresent`;
* pod IPs come from the bridge on `10.245.<node>.0/24`, outside the namespace's local route for
  `10.244.0.0/16` (that route would swallow the bridge's traffic);
* kubelet: `failCgroupV1: false` (the VM mounts cgroup v1 controllers), `cgroupDriver: cgroupfs`
  under a cgroup root of its own (`/grm-local-<pid>-<node>`, so two clusters' kubelets never
  garbage-collect each other's pod cgroups), `failSwapOn: false`, no eviction thresholds on the
  shared disk, `resolvConf: ""` (no cluster DNS), its API on the node IP (an address on `lo`).

GPUs: `nvidia.com/gpu` is advertised as a node-level extended resource by a PATCH of the Node's
`status.capacity`, as Kubernetes documents ("Advertise Extended Resources for a Node"); the
kubelet keeps it and derives allocatable. A device plugin would also hand each container device
files and env, but there are no GPUs here to hand out: the scheduler's accounting is what the
tests need, and the PATCH is the documented way to get exactly that.

One concept in one module (one real node: containerd + kubelet, their config and their life).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from grm_testkit.cluster import lifetime, tools

log = logging.getLogger(__name__)

KUBELET = "kubelet"
PAUSE = "pause"
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback")
# Debian's containerd (1.6), runc and containernetworking-plugins, and umoci to pack images.
SYSTEM_PROGRAMS = ("containerd", "ctr", "runc", "umoci")
SBIN_DIRS = ("/usr/sbin", "/sbin")
# The range of real pods: 10.245.<node index>.0/24, outside every local route of the namespace.
POD_RANGE = "10.245.0.0/16"
CGROUP_FS = Path("/sys/fs/cgroup")


def _path_with_sbin() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])


def missing() -> str | None:
    """Why a real node cannot run here (binaries, Debian packages), or None."""
    absent = tools.missing(tools.k8s_bin_dir(), (KUBELET, PAUSE))
    if absent:
        return f"{', '.join(absent)} missing in {tools.k8s_bin_dir()} (run `make control-plane`)"
    programs = [p for p in SYSTEM_PROGRAMS if shutil.which(p, path=_path_with_sbin()) is None]
    plugins = [p for p in CNI_PLUGINS if not (CNI_BIN_DIR / p).exists()]
    if programs or plugins:
        return (
            f"missing {', '.join(programs + [f'CNI {p}' for p in plugins])} "
            "(run `make system-deps` as root: containerd, runc, containernetworking-plugins, umoci)"
        )
    return None


def node_pod_cidr(index: int) -> str:
    return f"10.245.{index}.0/24"


# --- images -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalImage:
    """An OCI image built here: `files` (host path → path in the image) on an empty root, with
    `entrypoint`. Its name is `docker.io/local/<name>:<tag>`, the tag a hash of its inputs."""

    name: str
    files: tuple[tuple[Path, str], ...]
    entrypoint: tuple[str, ...]

    def tag(self) -> str:
        digest = hashlib.sha256()
        for source, target in self.files:
            digest.update(target.encode())
            digest.update(source.read_bytes())
        digest.update(json.dumps(self.entrypoint).encode())
        return digest.hexdigest()[:16]

    def reference(self) -> str:
        return f"docker.io/local/{self.name}:{self.tag()}"


def build_image(image: LocalImage, cache_dir: Path) -> Path:
    """The image as an OCI layout tarball, built with umoci unless `cache_dir` has it (keyed on
    the inputs' hash)."""
    tag = image.tag()
    out = cache_dir / f"{image.name}-{tag}.tar"
    if out.exists():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="grm-image-") as tmp:
        layout, bundle = Path(tmp) / "layout", Path(tmp) / "bundle"
        ref = f"{layout}:{tag}"
        run_program(["umoci", "init", "--layout", str(layout)])
        run_program(["umoci", "new", "--image", ref])
        run_program(["umoci", "unpack", "--rootless", "--image", ref, str(bundle)])
        for source, target in image.files:
            dest = bundle / "rootfs" / target.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
        run_program(["umoci", "repack", "--image", ref, str(bundle)])
        config = ["umoci", "config", "--image", ref]
        config += [f"--config.entrypoint={part}" for part in image.entrypoint]
        run_program(config)
        partial = out.with_suffix(".partial")
        with tarfile.open(partial, "w") as tar:
            tar.add(layout, arcname=".")
        partial.replace(out)
    return out


def run_program(argv: Sequence[str], timeout_s: float = 120.0) -> str:
    """Runs a node program (/usr/sbin on PATH); its stdout, or RuntimeError with its stderr's tail
    (stdout's when stderr is empty)."""
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "PATH": _path_with_sbin()},
        check=False,
    )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-3000:]
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {tail}")
    return result.stdout


def default_images() -> list[LocalImage]:
    """The images every real node gets: the sandbox and upstream's e2e test server `agnhost`
    (built from the same k8s.io/kubernetes module: `netexec`, `pause`, ... as in Kubernetes'
    own e2e tests)."""
    bin_dir = tools.k8s_bin_dir()
    images = [LocalImage("pause", ((bin_dir / PAUSE, "/pause"),), ("/pause",))]
    if (bin_dir / "agnhost").exists():
        images.append(LocalImage("agnhost", ((bin_dir / "agnhost", "/agnhost"),), ("/agnhost",)))
    return images


# --- configuration files ----------------------------------------------------------------------
def containerd_config(directory: Path, cni_conf_dir: Path, sandbox_image: str) -> str:
    """containerd's config.toml (version 2) for one node, everything under `directory`;
    `sandbox_image` as CRI normalises it (`docker.io/local/pause:<tag>`), imported beforehand."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{directory / "root"}"
state = "{directory / "state"}"
[grpc]
  address = "{directory / "containerd.sock"}"
[ttrpc]
  address = "{directory / "containerd.sock.ttrpc"}"
[debug]
  address = ""
[metrics]
  address = ""
[{cri}]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{directory / "runc"}"
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni_conf_dir}"
"""


def cni_config(name: str, bridge: str, pod_cidr: str, ipam_dir: Path) -> dict[str, object]:
    """A bridge + host-local + loopback network (CNI 1.0.0) for one node's pods."""
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(ipam_dir),
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "loopback"},
        ],
    }


def kubelet_config(
    *,
    runtime_socket: Path,
    node_ip: str,
    pod_cidr: str,
    cert: tuple[Path, Path],
    cgroup_root: str,
    healthz_port: int,
) -> dict[str, object]:
    """The KubeletConfiguration (kubelet.config.k8s.io/v1beta1) of one node."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(cert[0]),
        "tlsPrivateKeyFile": str(cert[1]),
        # The namespace is sealed and the API server is the only client of the kubelet API:
        # `kubectl logs` goes through it unauthenticated.
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{runtime_socket}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "failCgroupV1": False,
        "failSwapOn": False,
        "enforceNodeAllocatable": [],
        "resolvConf": "",
        "podCIDR": pod_cidr,
        # The disk is shared with other work: never evict or collect images for its fill level.
        "evictionHard": {"nodefs.available": "0%", "nodefs.inodesFree": "0%", "imagefs.available": "0%"},
        "imageGCHighThresholdPercent": 100,
        "serializeImagePulls": False,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
    }


# --- cgroups ----------------------------------------------------------------------------------
def cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers and the unified one)."""
    found: list[Path] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[2] in ("cgroup", "cgroup2"):
                found.append(Path(fields[1]))
    return found


def make_cgroup_root(name: str) -> None:
    """`/<name>` in every hierarchy: the kubelet refuses a cgroup root that does not exist."""
    for hierarchy in cgroup_hierarchies():
        with contextlib.suppress(OSError):
            (hierarchy / name).mkdir(exist_ok=True)


def remove_cgroup_root(name: str) -> None:
    """Removes `/<name>` and what the kubelet left below it, deepest first (empty by then)."""
    for hierarchy in cgroup_hierarchies():
        root = hierarchy / name
        if not root.is_dir():
            continue
        dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for directory in [*dirs, root]:
            with contextlib.suppress(OSError):
                directory.rmdir()


def containerd_socket(workdir: Path, node_name: str) -> Path:
    """Where the containerd of node `node_name` listens (under the cluster's workdir)."""
    return workdir / "nodes" / node_name / "containerd" / "containerd.sock"


def import_tarball(socket: Path, tarball: Path, reference: str) -> None:
    """Imports an OCI layout tarball whose tag is `reference`'s into the containerd at `socket`
    (CRI's `k8s.io` namespace), named `reference` (`docker.io/local/NAME:TAG`)."""
    base = reference.rsplit(":", 1)[0]
    argv = ["ctr", "--address", str(socket), "--namespace", "k8s.io", "images", "import"]
    run_program([*argv, "--base-name", base, "--digests", "--all-platforms", str(tarball)], timeout_s=600)


# --- the node ---------------------------------------------------------------------------------
class RealNode:
    """containerd + kubelet for one node, in the current network namespace."""

    def __init__(
        self,
        *,
        name: str,
        index: int,
        node_ip: str,
        workdir: Path,
        kubeconfig: Path,
        cert: tuple[Path, Path],
        image_cache: Path,
        verbosity: int,
    ) -> None:
        self.name = name
        self.index = index
        self.node_ip = node_ip
        self.dir = workdir / "nodes" / name
        self.kubeconfig = kubeconfig
        self.cert = cert
        self.image_cache = image_cache
        self.verbosity = verbosity
        self.pod_cidr = node_pod_cidr(index)
        self.cgroup_root = f"grm-local-{os.getpid()}-{index}"
        self.containerd: subprocess.Popen[bytes] | None = None
        self.kubelet: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return containerd_socket(self.dir.parent.parent, self.name)

    def ctr(self, *args: str, timeout_s: float = 120.0) -> str:
        return run_program(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args], timeout_s)

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with (self.dir / log_name).open("ab") as out:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PATH": _path_with_sbin()},
                preexec_fn=lifetime.die_with_parent,
            )

    def start_runtime(self, timeout_s: float = 60.0) -> None:
        """containerd up with every default image imported."""
        cdir = self.dir / "containerd"
        cni_dir = self.dir / "cni"
        (cni_dir / "net.d").mkdir(parents=True, exist_ok=True)
        cdir.mkdir(parents=True, exist_ok=True)
        network = cni_config(f"grm-{self.name}", f"grm{self.index}", self.pod_cidr, cni_dir / "ipam")
        (cni_dir / "net.d" / "10-grm.conflist").write_text(json.dumps(network, indent=1))
        images = default_images()
        (cdir / "config.toml").write_text(containerd_config(cdir, cni_dir / "net.d", images[0].reference()))
        self.containerd = self._spawn(["containerd", "--config", str(cdir / "config.toml")], "containerd.log")
        deadline = time.monotonic() + timeout_s
        while True:
            if self.containerd.poll() is not None:
                raise RuntimeError(
                    f"containerd exited {self.containerd.returncode}:\n{self.tail('containerd.log')}"
                )
            with contextlib.suppress(RuntimeError):
                self.ctr("version", timeout_s=10)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"containerd not up within {timeout_s:.0f} s:\n{self.tail('containerd.log')}"
                )
            time.sleep(0.1)
        for image in images:
            self.import_image(image)

    def import_image(self, image: LocalImage) -> str:
        """Builds (or takes from the cache) and imports `image`; returns its reference."""
        tarball = build_image(image, self.image_cache)
        import_tarball(self.socket, tarball, image.reference())
        return image.reference()

    def start_kubelet(self) -> None:
        make_cgroup_root(self.cgroup_root)
        kdir = self.dir / "kubelet"
        kdir.mkdir(parents=True, exist_ok=True)
        config = kubelet_config(
            runtime_socket=self.socket,
            node_ip=self.node_ip,
            pod_cidr=self.pod_cidr,
            cert=self.cert,
            cgroup_root=f"/{self.cgroup_root}",
            healthz_port=10348 + self.index,  # kube-proxy has 10249 and 10256
        )
        (self.dir / "kubelet.yaml").write_text(yaml.safe_dump(config))
        argv = [
            str(tools.k8s_bin_dir() / KUBELET),
            f"--config={self.dir / 'kubelet.yaml'}",
            f"--kubeconfig={self.kubeconfig}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.node_ip}",
            f"--root-dir={kdir}",
            f"--cert-dir={kdir / 'pki'}",
            f"--v={max(1, self.verbosity)}",
        ]
        self.kubelet = self._spawn(argv, "kubelet.log")

    @property
    def running(self) -> bool:
        return all(p is not None and p.poll() is None for p in (self.containerd, self.kubelet))

    def tail(self, log_name: str, lines: int = 30) -> str:
        try:
            return "\n".join((self.dir / log_name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stops the kubelet, then kills and deletes every container task (containers and shims
        outlive containerd otherwise), then containerd; then unmounts what they mounted and
        removes the cgroup root."""
        _terminate(self.kubelet, timeout_s)
        netns_files: list[Path] = []
        if self.containerd is not None and self.containerd.poll() is None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                rows = [line.split() for line in self.ctr("tasks", "list", timeout_s=10).splitlines()[1:]]
                netns_files = _pod_netns_files([int(r[1]) for r in rows if len(r) > 1 and r[1].isdigit()])
                for row in rows:
                    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                        self.ctr("tasks", "kill", "--signal", "SIGKILL", row[0], timeout_s=10)
                        self.ctr("tasks", "delete", "--force", row[0], timeout_s=10)
        _terminate(self.containerd, timeout_s)
        runc_root = self.dir / "containerd" / "runc" / "k8s.io"
        if runc_root.is_dir():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                for line in run_program(["runc", "--root", str(runc_root), "list", "-q"], 10).split():
                    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                        run_program(["runc", "--root", str(runc_root), "delete", "--force", line], 10)
        _unmount_below(self.dir)
        for path in netns_files:
            subprocess.run(["umount", str(path)], capture_output=True, check=False, timeout=10)
            path.unlink(missing_ok=True)
        remove_cgroup_root(self.cgroup_root)


def _pod_netns_files(pids: Sequence[int]) -> list[Path]:
    """The `/var/run/netns/cni-*` files (bind mounts the CNI setup of containerd made, which
    outlive it) of the network namespaces the processes `pids` live in: this node's pods only,
    never another cluster's."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            inodes.add(os.stat(f"/proc/{pid}/ns/net").st_ino)
    found = []
    with contextlib.suppress(OSError):
        for path in Path("/var/run/netns").glob("cni-*"):
            with contextlib.suppress(OSError):
                if path.stat().st_ino in inodes:
                    found.append(path)
    return found


def _terminate(proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _unmount_below(directory: Path) -> None:
    """Unmounts what the kubelet and containerd mounted under `directory` (volumes, rootfs
    overlays, sandbox shm), deepest first, so the work dir can be removed."""
    prefix = str(directory.resolve()) + "/"
    mounts: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            target = line.split()[1].replace("\\040", " ")
            if target.startswith(prefix):
                mounts.append(target)
    for target in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False, timeout=10)
