"""A real two-node SLURM cluster on this one machine, for tests.

`slurm_cluster()` installs Debian's slurm packages if missing, starts munge, a controller and two slurmd "nodes"
(nodeA, nodeB on 127.0.0.1, distinct ports) under a fresh directory, waits until both are idle and yields the
environment (SLURM_CONF, ...) to run slurm commands with. Tear-down kills exactly the PIDs in the daemons' PID
files (never by process name), also when start-up fails. `require_slurm()` turns "cannot run here" into a
pytest.skip with the reason. Usable outside pytest too:

    with slurm_cluster() as env:
        subprocess.run(["sinfo"], env=env)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo", "squeue", "scancel", "munged", "mungekey"]
NODES = ["nodeA", "nodeB"]
CPUS_PER_NODE = 2


class SlurmUnavailable(RuntimeError):
    """This machine cannot host the test cluster (not root, no apt, install failed); the message says why."""


def _missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def ensure_installed() -> None:
    """Install slurm and munge with apt-get when a binary is missing; raise SlurmUnavailable when that cannot work."""
    if not _missing_binaries():
        return
    if os.geteuid() != 0:
        missing = ", ".join(_missing_binaries())
        raise SlurmUnavailable(f"slurm binaries missing ({missing}) and not root to apt-get them")
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable("slurm binaries missing and apt-get is not available")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True, timeout=600)

    install = ("install", "-y", "-qq", "--no-install-recommends", *PACKAGES)
    proc = apt(*install)
    if proc.returncode != 0:  # a fresh container has no package lists yet
        apt("update", "-qq")
        proc = apt(*install)
    if proc.returncode != 0 or _missing_binaries():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SlurmUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {' | '.join(tail)}")


def require_slurm() -> None:
    """pytest.skip (with the reason) unless root and slurm is installed or installable."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("SLURM test cluster needs root (munge runs as user munge, slurmd as root)")
    try:
        ensure_installed()
    except SlurmUnavailable as err:
        pytest.skip(f"SLURM test cluster unavailable: {err}")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _slurm_conf(root: Path, munge_socket: Path, ports: list[int]) -> str:
    ctld_port, *node_ports = ports
    nodes = "\n".join(
        f"NodeName={name} NodeAddr=127.0.0.1 NodeHostname={socket.gethostname()} Port={port} "
        f"CPUs={CPUS_PER_NODE} State=UNKNOWN"
        for name, port in zip(NODES, node_ports)
    )
    return f"""\
ClusterName=avtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
{nodes}
PartitionName=test Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


def _stop(pid_file: Path, proc: subprocess.Popen) -> None:
    """SIGTERM the PID recorded in pid_file, then SIGKILL after 10 s.

    Daemons run in the foreground as our children, so the recorded PID must be the child's; a missing or stale file
    falls back to the child's PID. Nothing is ever looked up by name.
    """
    if proc.poll() is not None:
        return
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        pid = proc.pid
    if pid != proc.pid:
        pid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _cancel_jobs(env: dict[str, str]) -> None:
    """Cancel whatever is still queued or running so no job step outlives the cluster."""
    subprocess.run(["scancel", "--full", "--user=root"], env=env, capture_output=True, timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True, timeout=30).stdout
        if not out.strip():
            return
        time.sleep(0.5)


def _wait_idle(env: dict[str, str], root: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T %D"], env=env, capture_output=True, text=True, timeout=30)
        last = (proc.stdout + proc.stderr).strip()
        if last == f"idle {len(NODES)}":
            return
        time.sleep(0.3)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((root / "log").glob("*.log")))
    raise RuntimeError(f"SLURM test cluster not idle after {timeout:.0f}s (sinfo: {last!r})\n{logs}")


@contextlib.contextmanager
def slurm_cluster(base: str | os.PathLike | None = None) -> Iterator[dict[str, str]]:
    """Start munge + slurmctld + two slurmd under a new directory in `base`; yield the env to run slurm commands."""
    ensure_installed()
    # munged (user munge) must reach its files, so the tree is world-traversable (mkdtemp makes 0700).
    root = Path(tempfile.mkdtemp(prefix="slurm-test-", dir=base))
    root.chmod(0o755)
    for sub in ("state", "spool", "run", "log", "munge"):
        (root / sub).mkdir(mode=0o755)
    munge_dir = root / "munge"
    shutil.chown(munge_dir, "munge", "munge")
    key, munge_socket = munge_dir / "munge.key", munge_dir / "munge.socket"
    subprocess.run(["mungekey", "--create", "--force", f"--keyfile={key}"], check=True, capture_output=True)
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)

    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, munge_socket, _free_ports(1 + len(NODES))))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for var in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k != "SLURM_CONF"]:
        del env[var]  # a surrounding allocation's variables would leak into our jobs

    daemons: list[tuple[Path, subprocess.Popen]] = []

    def start(pid_file: Path, log_name: str, cmd: list[str], **kw) -> None:
        log = open(root / "log" / log_name, "ab")
        daemons.append((pid_file, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, **kw)))
        log.close()

    try:
        start(munge_dir / "munged.pid", "munged.out", [
            "munged", "--foreground", f"--socket={munge_socket}", f"--key-file={key}",
            f"--pid-file={munge_dir / 'munged.pid'}", f"--log-file={munge_dir / 'munged.log'}",
            f"--seed-file={munge_dir / 'munged.seed'}",
        ], user="munge", group="munge", extra_groups=[])
        deadline = time.monotonic() + 10
        while not munge_socket.exists():
            if time.monotonic() > deadline or daemons[-1][1].poll() is not None:
                raise RuntimeError(f"munged did not start: {(munge_dir / 'munged.log').read_text()[-800:]}")
            time.sleep(0.05)
        start(root / "run" / "slurmctld.pid", "slurmctld.out", ["slurmctld", "-D", "-c", "-i"])
        for node in NODES:
            start(root / "run" / f"slurmd-{node}.pid", f"slurmd-{node}.out", ["slurmd", "-D", "-N", node])
        _wait_idle(env, root)
        yield env
    finally:
        if len(daemons) > 1:
            with contextlib.suppress(Exception):
                _cancel_jobs(env)
        for pid_file, proc in reversed(daemons):
            _stop(pid_file, proc)
        shutil.rmtree(root, ignore_errors=True)
