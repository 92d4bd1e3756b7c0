"""launcher=slurm against a real SLURM (tests/slurm_cluster.py: slurmctld + slurmd + munged on
this machine, no GPUs, no accounting storage): a sweep completes with its results, summary and
report; runs stopped by SIGTERM (scancel) or by the time-limit warning (SIGUSR2, which requeues)
resume to the same curve as uninterrupted ones; what SLURM refuses is one line, exit 2.

`make test-slurm` (CI runs it); skipped with the reason where no cluster can be started."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parent.parent
# Small runs (mnist_fnn on the embedded digits: 12 epochs of ~0.3 s), long enough for a signal
# to land mid-run; one CPU and 2 GB each, so that the two runs of a sweep share a 2-core node.
EPOCHS = 12
RUN = [
    "launcher=slurm",
    "trainer=cpu",
    f"trainer.max_epochs={EPOCHS}",
    "callbacks.diagnostics=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "seed=0,1",
]


def sweep_cmd(log_dir, *args):
    return [sys.executable, "src/train.py", "-m", *RUN, *args, f"paths.log_dir={log_dir}"]


def train(cluster, log_dir, *args, timeout=300):
    return subprocess.run(
        sweep_cmd(log_dir, *args),
        cwd=ROOT,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def curve(r: dict) -> list:
    return [{k: v for k, v in e.items() if k != "epoch_time_s"} for e in r["epochs"]]


def runs(log_dir, sweep_name) -> dict[int, Path]:
    """seed -> run directory."""
    return {
        int(p.name.rsplit("-s", 1)[1]): p
        for p in (Path(log_dir) / "sweeps" / sweep_name).glob("mnist5k-*-s[0-9]")
    }


def submitted_job(sweep_dir: Path, task: int) -> str:
    """The SLURM id of the sweep's array task (= job number in the sweep: seed here), from the
    folder submitit made for it: <array job>_<task>."""
    (folder,) = (sweep_dir / ".submitit").glob(f"*_{task}")
    return folder.name


def make_report(log_dir, sweep_name) -> subprocess.CompletedProcess:
    """src/report.py on one sweep, into <log_dir>/report."""
    return subprocess.run(
        [sys.executable, "src/report.py", str(log_dir / "sweeps" / sweep_name), "-o",
         str(log_dir / "report")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def explain(out, cluster) -> str:
    return f"stdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-3000:]}\n{cluster.logs()}"


@pytest.fixture(scope="module")
def reference(slurm_cluster, tmp_path_factory):
    """The uninterrupted sweep: two runs on the cluster."""
    log_dir = tmp_path_factory.mktemp("slurm_ref")
    out = train(slurm_cluster, log_dir, "sweep_name=ref")
    return log_dir, out


def test_sweep_on_slurm_completes_with_results_summary_and_report(slurm_cluster, reference):
    log_dir, out = reference
    assert out.returncode == 0, explain(out, slurm_cluster)
    assert "sweep: 2 runs: 2 completed" in out.stdout
    assert "Bypassing sacct error" not in out.stdout + out.stderr  # no accounting here: once
    assert (out.stdout + out.stderr).count("sacct: Slurm accounting storage is disabled") <= 1
    done = runs(log_dir, "ref")
    assert sorted(done) == [0, 1]
    for seed, run_dir in done.items():
        r = results(run_dir)
        assert r["status"] == "completed" and len(r["epochs"]) == EPOCHS, r["status"]
        assert r["config"]["seed"] == seed and r["device"].startswith("cpu")
        assert r["device"].endswith(", 1 thread")  # OMP_NUM_THREADS = the job's CPUs
        assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert curve(results(done[0])) != curve(results(done[1]))

    report = make_report(log_dir, "ref")
    assert report.returncode == 0, report.stderr[-2000:]
    rows = list((log_dir / "report").glob("**/results.csv"))
    assert rows, list((log_dir / "report").rglob("*"))
    table = rows[0].read_text()
    assert "mnist_fnn" in table and ",2," in table  # one configuration, n = 2 seeds
    assert list((log_dir / "report").glob("**/*.png"))


def test_preempted_and_timed_out_runs_resume_to_the_same_curve(slurm_cluster, reference, tmp_path):
    """seed 0: `scancel --signal=TERM` (preemption, a time limit, a person): interrupted, the
    job ends, rerunning the command resumes it. seed 1: `scancel --signal=USR2`, the warning
    SLURM sends signal_delay_s before the time limit: interrupted, the job requeues itself and
    the same sweep waits for it to resume and complete."""
    ref_dir, ref_out = reference
    assert ref_out.returncode == 0, explain(ref_out, slurm_cluster)
    ref = {seed: curve(results(d)) for seed, d in runs(ref_dir, "ref").items()}
    proc = subprocess.Popen(
        sweep_cmd(tmp_path, "sweep_name=preempt"),
        cwd=ROOT,
        env=slurm_cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    signals = {0: "TERM", 1: "USR2"}
    sent = {}
    deadline = time.time() + 240
    try:  # signal each run once it has checkpointed an epoch and is still training
        while len(sent) < 2 and time.time() < deadline and proc.poll() is None:
            for seed, run_dir in runs(tmp_path, "preempt").items():
                if seed in sent or not (run_dir / "checkpoints" / "last.ckpt").exists():
                    continue
                if results(run_dir)["status"] != "running":
                    continue
                job = submitted_job(tmp_path / "sweeps" / "preempt", seed)
                slurm_cluster.run("scancel", f"--signal={signals[seed]}", job, check=True)
                sent[seed] = job
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=max(1, deadline - time.time()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert len(sent) == 2, f"signalled only {sent}\n" + explain(out, slurm_cluster)
    assert proc.returncode == 1, explain(out, slurm_cluster)  # one run not finished
    assert (
        "sweep: 2 runs: 1 completed, 1 interrupted (rerun the same command to resume), "
        "1 of them resumed from a checkpoint"
    ) in stdout, explain(out, slurm_cluster)

    done = runs(tmp_path, "preempt")
    stopped = results(done[0])
    assert stopped["status"] == "interrupted" and stopped["stopped_by"] == "SIGTERM"
    assert 1 <= len(stopped["epochs"]) < EPOCHS
    requeued = results(done[1])
    assert requeued["status"] == "completed" and requeued["resumed_from_epoch"] >= 1
    assert curve(requeued) == ref[1]  # the same batches, the same optimizer state
    job_log = next(Path(tmp_path, "sweeps", "preempt", ".submitit").glob(f"{sent[1]}/*_log.out"))
    assert "by SIGUSR2" in job_log.read_text() and "requeued" in job_log.read_text()

    again = train(slurm_cluster, tmp_path, "sweep_name=preempt")
    assert again.returncode == 0, explain(again, slurm_cluster)
    assert (
        "sweep: 2 runs: 1 completed, 1 skipped (already finished), 1 of them resumed"
        in again.stdout
    )
    resumed = results(done[0])
    assert resumed["status"] == "completed" and resumed["resumed_from_epoch"] >= 1
    assert curve(resumed) == ref[0]


def test_gpu_request_on_a_cluster_without_gpus_is_one_line(slurm_cluster, tmp_path):
    # trainer=default asks for a GPU per run; this cluster has none: sbatch refuses.
    out = subprocess.run(
        [
            sys.executable,
            "src/train.py",
            "-m",
            "launcher=slurm",
            "seed=0",
            f"paths.log_dir={tmp_path}",
        ],
        cwd=ROOT,
        env=slurm_cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, explain(out, slurm_cluster)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: SLURM rejected the sweep: Invalid generic resource"
    ), out.stderr
    assert "trainer=cpu" in lines[0] and "Traceback" not in out.stdout


def test_a_job_slurm_will_never_start_is_one_line_not_a_wait(slurm_cluster, tmp_path):
    cpus = slurm_cluster.node_cpus() + 1  # more than any node has: pends with PartitionConfig
    out = subprocess.run(
        [
            sys.executable,
            "src/train.py",
            "-m",
            "launcher=slurm",
            "trainer=cpu",
            "seed=0",
            f"hydra.launcher.cpus_per_task={cpus}",
            f"paths.log_dir={tmp_path}",
        ],
        cwd=ROOT,
        env=slurm_cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, explain(out, slurm_cluster)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "PartitionConfig" in lines[0], out.stderr
    assert "hydra.launcher.cpus_per_task" in lines[0]
    assert not [j for j, s in slurm_cluster.jobs().items() if s in ("PENDING", "RUNNING")]


# ------------------------------------------------------------------ launcher=slurm_stacked
STACKED = ["launcher=slurm_stacked", "hydra.launcher.stack_size=2", "seed=0,1,2,3"]


def stacked_cmd(log_dir, *args):
    # RUN's launcher and seeds replaced: 4 runs in 2 stacks of 2, one array task each
    run = [a for a in RUN if not a.startswith(("launcher=", "seed="))]
    return [sys.executable, "src/train.py", "-m", *run, *STACKED, *args, f"paths.log_dir={log_dir}"]


@pytest.fixture(scope="module")
def stacked_reference(slurm_cluster, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("slurm_stacked_ref")
    out = subprocess.run(
        stacked_cmd(log_dir, "sweep_name=sref"),
        cwd=ROOT,
        env=slurm_cluster.env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    return log_dir, out


def test_stacks_go_to_slurm_as_one_array_task_each(slurm_cluster, stacked_reference):
    log_dir, out = stacked_reference
    assert out.returncode == 0, explain(out, slurm_cluster)
    assert "stacked: 4 runs -> 2 SLURM array tasks: 2/2" in out.stdout
    assert "sweep: 4 runs: 4 completed" in out.stdout
    tasks = list((log_dir / "sweeps" / "sref" / ".submitit").glob("*_[0-9]"))
    assert len(tasks) == 2, tasks  # not one job per run
    done = runs(log_dir, "sref")
    assert sorted(done) == [0, 1, 2, 3]
    for seed, run_dir in done.items():
        r = results(run_dir)
        assert r["status"] == "completed" and len(r["epochs"]) == EPOCHS
        assert r["stack_size"] == 2 and r["config"]["seed"] == seed
        assert (run_dir / "checkpoints" / "last.ckpt").exists()
        assert (run_dir / ".hydra" / "config.yaml").exists()
    report = make_report(log_dir, "sref")
    assert report.returncode == 0, report.stderr[-2000:]


def test_a_preempted_stack_resumes_every_member_to_the_uninterrupted_curves(
    slurm_cluster, stacked_reference, tmp_path
):
    ref_dir, ref_out = stacked_reference
    assert ref_out.returncode == 0, explain(ref_out, slurm_cluster)
    ref = {seed: curve(results(d)) for seed, d in runs(ref_dir, "sref").items()}
    proc = subprocess.Popen(
        stacked_cmd(tmp_path, "sweep_name=spre"),
        cwd=ROOT,
        env=slurm_cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sent, deadline = None, time.time() + 300
    try:  # TERM the first stack (seeds 0, 1) once both members have checkpointed an epoch
        while sent is None and time.time() < deadline and proc.poll() is None:
            done = runs(tmp_path, "spre")
            if all(
                s in done
                and (done[s] / "checkpoints" / "last.ckpt").exists()
                and results(done[s])["status"] == "running"
                for s in (0, 1)
            ):
                sent = submitted_job(tmp_path / "sweeps" / "spre", 0)
                slurm_cluster.run("scancel", "--signal=TERM", sent, check=True)
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=max(1, deadline - time.time()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert sent, "never signalled\n" + explain(out, slurm_cluster)
    assert proc.returncode == 1, explain(out, slurm_cluster)
    assert "sweep: 4 runs: 2 completed, 2 interrupted" in stdout, explain(out, slurm_cluster)
    done = runs(tmp_path, "spre")
    for seed in (0, 1):
        r = results(done[seed])
        assert r["status"] == "interrupted" and r["stopped_by"] == "SIGTERM"
        assert 1 <= len(r["epochs"]) < EPOCHS
    again = subprocess.run(
        stacked_cmd(tmp_path, "sweep_name=spre"),
        cwd=ROOT,
        env=slurm_cluster.env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert again.returncode == 0, explain(again, slurm_cluster)
    assert "2 skipped (already finished)" in again.stdout
    for seed in (0, 1):
        resumed = results(done[seed])
        assert resumed["status"] == "completed" and resumed["resumed_from_epoch"] >= 1
        for a, b in zip(curve(resumed), ref[seed], strict=True):
            for key in ("test_acc", "test_loss", "train_loss", "train_acc"):
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (seed, key)
