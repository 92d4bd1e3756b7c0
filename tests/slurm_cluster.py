"""A real single-node SLURM cluster for tests: munged + slurmctld + slurmd on this machine, as
root, with their own config, state, logs, munge key and ports under one temporary folder.

    cluster = SlurmCluster.start()        # or the `slurm_cluster` fixture (tests/conftest.py)
    subprocess.run(["sbatch", ...], env=cluster.env)   # SLURM_CONF points clients at it
    cluster.stop()                        # cancels its jobs, stops the daemons by PID

    python tests/slurm_cluster.py         # by hand: prints the SLURM_CONF to export; Ctrl-C stops

Needs Debian's slurm-wlm and munge; installs them with apt-get when missing (root only). The
node is this machine as `slurmd -C` sees it, without GPUs (no GRES), in one partition `debug`.
The settings a real cluster would not have are there to keep tests short; each says why.
"""

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
PACKAGES = ("slurm-wlm", "munge")


class Unavailable(Exception):
    """No cluster can be started here (not root, no apt, install failed): why, in one line."""


def ensure_installed() -> None:
    if all(shutil.which(p) for p in DAEMONS + CLIENTS):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable(
            f"needs {' and '.join(PACKAGES)}: `apt-get install "
            f"{' '.join(PACKAGES)}` as root (Debian/Ubuntu)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *PACKAGES]
    done = subprocess.run(install, env=env, capture_output=True, text=True)
    if done.returncode != 0:  # stale package lists (a fresh CI image has none)
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not all(shutil.which(p) for p in DAEMONS + CLIENTS):
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        raise Unavailable(f"apt-get install {' '.join(PACKAGES)} failed: {tail[0]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    # The daemons get SIGTERM if this process dies without stopping them (a killed pytest).
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def slurm_conf(d: Path, node: str, host: str, ports: tuple[int, int]) -> str:
    return f"""\
ClusterName=zeroinit-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job may start again this many seconds after its end (default 120).
AuthInfo=socket={d}/munge.socket,cred_expire=5
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
MailProg=/bin/true
MpiDefault=none
# No cgroups (containers, CI runners): processes tracked by parent, tasks not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No accounting storage, as on many small clusters: sacct fails, the launcher must cope.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# CPUs and memory are consumed by jobs, as on a real cluster.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Start jobs within seconds (default: event-driven plus every 60 s).
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
# SIGKILL this long after SIGTERM (default 30 s).
KillWait=5
ReturnToService=2
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: dict[str, subprocess.Popen] = {}

    # ---------------------------------------------------------------- start
    @classmethod
    def start(cls, timeout_s: float = 60) -> "SlurmCluster":
        ensure_installed()
        if os.geteuid() != 0:
            raise Unavailable("slurmd must run as root to start jobs")
        # Not under pytest's tmp_path: munged wants every folder above its socket searchable
        # by all, and pytest's are 0700.
        cluster = cls(Path(tempfile.mkdtemp(prefix="zeroinit-slurm-")))
        try:
            cluster._start(timeout_s)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start(self, timeout_s):
        d = self.root
        d.chmod(0o755)
        for sub in ("state", "spool"):
            (d / sub).mkdir()
        key = d / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True).stdout
        node = next((ln for ln in node.splitlines() if ln.startswith("NodeName=")), None)
        if node is None:
            raise Unavailable("`slurmd -C` printed no NodeName line")
        host = node.split()[0].split("=", 1)[1]
        self.conf.write_text(slurm_conf(d, node, host, (_free_port(), _free_port())))

        self._spawn(
            "munged",
            [
                "munged",
                "-F",
                f"--socket={d}/munge.socket",
                f"--key-file={key}",
                f"--pid-file={d}/munged.pid",
                f"--log-file={d}/munged.log",
                f"--seed-file={d}/munged.seed",
            ],
        )
        self._wait(lambda: (d / "munge.socket").exists(), "munged", timeout_s)
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        self._wait(
            lambda: self.run("sinfo", "-h", "-o", "%T").stdout.strip() == "idle",
            "an idle node",
            timeout_s,
        )

    def _spawn(self, name, command):
        out = open(self.root / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def _wait(self, ready, what, timeout_s):
        deadline = time.monotonic() + timeout_s
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{dead[0]} exited" if dead else f"no {what} after {timeout_s:.0f}s"
                raise RuntimeError(f"SLURM test cluster: {why}\n{self.logs()}")
            time.sleep(0.2)

    # ---------------------------------------------------------------- use
    def run(self, *command, check=False) -> subprocess.CompletedProcess:
        """A SLURM client command (squeue, scancel, scontrol ...) against this cluster."""
        return subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=60, check=check
        )

    def jobs(self) -> dict[str, str]:
        """{job id: state} of the jobs it holds, array tasks one by one (e.g. "3_1")."""
        out = self.run("squeue", "-h", "-r", "-t", "all", "-o", "%i|%T").stdout
        return dict(ln.split("|", 1) for ln in out.splitlines() if "|" in ln)

    def node_cpus(self) -> int:
        return int(self.run("sinfo", "-h", "-o", "%c").stdout.strip().rstrip("+"))

    def logs(self, lines: int = 15) -> str:
        out = []
        for path in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)

    # ---------------------------------------------------------------- stop
    def stop(self, keep: bool = False):
        """Cancel the jobs (slurmstepd would outlive slurmd), stop the daemons we started,
        by PID, and delete the folder unless `keep`."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            held = [
                j
                for j, state in self.jobs().items()
                if state in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "SUSPENDED")
            ]
            if held:
                self.run("scancel", *held)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and any(
                    s in ("RUNNING", "COMPLETING") for s in self.jobs().values()
                ):
                    time.sleep(0.5)
        for name in reversed(list(self.procs)):  # slurmd, slurmctld, munged
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs = {}
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)


if __name__ == "__main__":
    try:
        c = SlurmCluster.start()
    except Unavailable as e:
        sys.exit(f"error: {e}")
    print(
        f"SLURM is up: export SLURM_CONF={c.conf}   (Ctrl-C or kill {os.getpid()} stops it)",
        flush=True,
    )
    # Also when started in the background, where the shell has SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
