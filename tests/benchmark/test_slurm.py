"""`sweep.py --slurm` against a real single-node Slurm started on localhost.

The fixture starts munged (its own key, socket and logs in a temp dir) and slurmctld + slurmd in
the foreground on a minimal slurm.conf (own ports, proctrack/linuxproc, task/none, no
accounting), exports SLURM_CONF, and stops the three daemons afterwards, also when the test
fails. It needs Debian's `slurm-wlm` and `munge` and root (slurmd starts job steps as the job's
user); it is skipped, saying which, only when the binaries are absent.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.sweep import Args, main
from conftest import skip_unless_available

FAKE = str(Path(__file__).with_name("fake_algo.py"))
DAEMONS = ["munged", "slurmctld", "slurmd", "sbatch", "sinfo"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(tmp: Path, node: str, cpus: int) -> str:
    return f"""
ClusterName=benchtest
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={tmp}/munge.socket
CredType=cred/munge
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
StateSaveLocation={tmp}/state
SlurmdSpoolDir={tmp}/spool
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd.pid
SlurmctldLogFile={tmp}/slurmctld.log
SlurmdLogFile={tmp}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def logs(tmp: Path) -> str:
    """The daemons' logs, for the failure message."""
    out = []
    for name in ("munged.log", "slurmctld.log", "slurmd.log"):
        path = tmp / name
        if path.exists():
            out.append(f"--- {name} (tail)\n" + "\n".join(path.read_text(errors="replace").splitlines()[-25:]))
    return "\n".join(out)


@pytest.fixture
def slurm_cluster(tmp_path_factory, monkeypatch):
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    skip_unless_available(f"Slurm cannot run here: {', '.join(missing)} not found (install: apt-get install "
                          "slurm-wlm munge)" if missing else None)
    # short path: the munge socket path must fit in a unix socket name (108 bytes)
    tmp = Path(tmp_path_factory.mktemp("slurm"))
    os.chmod(tmp, 0o700)
    for sub in ("state", "spool"):
        (tmp / sub).mkdir()
    node = socket.gethostname().split(".")[0]
    conf = tmp / "slurm.conf"
    conf.write_text(slurm_conf(tmp, node, os.cpu_count() or 1))
    key = tmp / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    monkeypatch.setenv("SLURM_CONF", str(conf))
    daemons = []
    try:
        daemons.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={tmp}/munge.socket",
             f"--pid-file={tmp}/munged.pid", f"--log-file={tmp}/munged.log", f"--seed-file={tmp}/munge.seed"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        deadline = time.time() + 15
        while not (tmp / "munge.socket").exists() and time.time() < deadline:
            time.sleep(0.1)
        daemons.append(subprocess.Popen(["slurmctld", "-D", "-c", "-f", str(conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        daemons.append(subprocess.Popen(["slurmd", "-D", "-N", node, "-f", str(conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        deadline, state = time.time() + 60, ""
        while time.time() < deadline:
            result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
            state = result.stdout.strip() + result.stderr.strip()
            if state == "idle":
                break
            if any(d.poll() is not None for d in daemons):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the Slurm node did not become idle within 60 s (sinfo: {state!r})\n{logs(tmp)}")
        if state != "idle":
            pytest.fail(f"a Slurm daemon exited at start (sinfo: {state!r})\n{logs(tmp)}")
        yield tmp
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
        for daemon in reversed(daemons):
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()


def test_sweep_submits_a_two_task_array_to_slurm(slurm_cluster, tmp_path, capsys):
    args = Args(scripts=[FAKE], env_ids=["E-v0"], seeds=[1, 2], output_dir=str(tmp_path / "runs"),
                python=sys.executable, slurm=True, slurm_wait=True, slurm_cpus_per_task=1, slurm_time="00:05:00",
                common_args=["--total-timesteps", "40", "--eval-every", "10"])
    code = main(args)
    out = capsys.readouterr().out
    (sweep_dir,) = (tmp_path / "runs" / "slurm").iterdir()
    task_logs = {p.name: p.read_text() for p in sweep_dir.glob("*.out")}
    assert code == 0, f"{out}\n{task_logs}\n{logs(slurm_cluster)}"
    assert "#SBATCH --array=0-1" in (sweep_dir / "sweep.sbatch").read_text()
    assert len(task_logs) == 2 and all("[sweep task" in text for text in task_logs.values())
    folders = sorted((tmp_path / "runs").glob("E-v0__fake_algo-*"))
    assert [f.name.split("__")[2] for f in folders] == ["1", "2"]
    for folder in folders:
        assert json.loads((folder / "summary.json").read_text())["global_step"] == 40
        assert (folder / "eval.csv").read_text().count("\n") == 1 + 4 * 2  # header + 4 evals x 2 modes
        assert json.loads((folder / "args.json").read_text())["env"]["OMP_NUM_THREADS"] == "1"
    # resubmitting the finished sweep submits nothing
    assert main(args) == 0
    assert "2 of 2 runs finished already; 0 to submit" in capsys.readouterr().out
