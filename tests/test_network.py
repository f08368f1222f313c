"""The embedded Ray is a loopback-only node, and a `kill -9` of its driver leaves nothing behind.

Ray binds a node's servers to 127.0.0.1 only when the node's address is a loopback address;
`jobs.ray_compat.init_ray` makes the embedded node one (see there). These tests watch the
real thing: every listening TCP socket and every bound UDP socket of a driver's process
tree (gcs_server and raylet are its children, workers and agents the raylet's), sampled
many times while it runs, since workers come and go.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import ray  # first: it puts its bundled psutil on sys.path

import psutil  # isort: skip
from tests.conftest import REPO, cli_command, cli_env

Socket = tuple[str, int, str, str, int]  # process name, pid, tcp/udp, address, port


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:  # ::ffff:127.0.0.1 (dual-stack socket)
        ip = ip.ipv4_mapped
    return ip.is_loopback


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def listening(processes: list[psutil.Process]) -> set[Socket]:
    found: set[Socket] = set()
    for process in processes:
        try:
            name = process.name()
            for conn in process.net_connections(kind="inet"):
                if conn.type == socket.SOCK_STREAM and conn.status == psutil.CONN_LISTEN:
                    found.add((name, process.pid, "tcp", conn.laddr.ip, conn.laddr.port))
                elif conn.type == socket.SOCK_DGRAM and conn.laddr and not conn.raddr:
                    found.add((name, process.pid, "udp", conn.laddr.ip, conn.laddr.port))
        except psutil.Error:  # gone meanwhile, or a zombie
            continue
    return found


def exposed(sockets: set[Socket]) -> list[str]:
    return sorted(f"{name}({pid}) {proto} {ip}:{port}" for name, pid, proto, ip, port in sockets
                  if not is_loopback(ip))


def alive(members: dict[int, tuple[float, str]]) -> list[str]:
    """Those of `members` (pid -> (create time, name)) still running (zombies are dead)."""
    left = []
    for pid, (created, _) in members.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{process.name()}({pid})")
        except psutil.Error:
            continue
    return left


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def kill_members(members: dict[int, tuple[float, str]]) -> None:
    for pid, (created, _) in members.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == created:
                process.kill()
        except psutil.Error:
            continue


def record(processes: list[psutil.Process], members: dict[int, tuple[float, str]]) -> None:
    for process in processes:
        try:
            members.setdefault(process.pid, (process.create_time(), process.name()))
        except psutil.Error:
            continue


def watch(process: subprocess.Popen, seconds: float, interval: float, sockets: set[Socket],
          members: dict[int, tuple[float, str]]) -> None:
    """Sample the listening sockets and members of `process`'s tree until it ends (or `seconds`)."""
    deadline = time.monotonic() + seconds
    while process.poll() is None and time.monotonic() < deadline:
        processes = tree(process.pid)
        record(processes, members)
        sockets |= listening(processes)
        time.sleep(interval)


# --- init_ray's two branches (no Ray started) --------------------------------------------


@pytest.fixture
def fake_ray_init(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Replace ray.init; record its arguments, Ray's cluster switch and what Ray would make
    of a "127.0.0.1" node address at the moment of the call."""
    from ray._private import ray_constants, services

    import jobs.ray_compat as compat

    calls: list[dict] = []

    def init(**kwargs):
        calls.append({"kwargs": kwargs, "cluster_flag": ray_constants.ENABLE_RAY_CLUSTER,
                      "resolved": services.resolve_ip_for_localhost("127.0.0.1"),
                      "environ": dict(os.environ)})

    monkeypatch.setattr(compat.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(compat.ray, "init", init)
    # A Ray started by another test of this session would answer for the node address.
    monkeypatch.setattr(ray._private.worker, "_global_node", None)
    monkeypatch.setattr(compat, "start_raylet_reaper", lambda: calls.append({"reaper": True}))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls


def test_embedded_ray_is_a_loopback_node(fake_ray_init: list[dict]) -> None:
    from ray._private import ray_constants

    from jobs.ray_compat import init_ray

    flag_before, environ_before = ray_constants.ENABLE_RAY_CLUSTER, dict(os.environ)
    assert init_ray(None, 2) is True
    call, reaper = fake_ray_init
    assert call["kwargs"]["address"] == "local"
    assert call["kwargs"]["_node_ip_address"] == "127.0.0.1"
    assert call["kwargs"]["include_dashboard"] is False
    assert call["kwargs"]["num_cpus"] == 2
    # Ray keeps the loopback node address during the call (on Linux it would otherwise
    # replace it by the LAN address), and the switch is back afterwards.
    assert call["resolved"] == "127.0.0.1"
    assert call["cluster_flag"] is False
    assert ray_constants.ENABLE_RAY_CLUSTER == flag_before
    # Nothing was put in the environment (Ray's processes inherit it).
    assert call["environ"] == environ_before == dict(os.environ)
    assert reaper == {"reaper": True}


@pytest.mark.parametrize("given, env", [("ray://head:10001", None), (None, "auto")])
def test_joining_a_cluster_leaves_ray_networking_alone(
        fake_ray_init: list[dict], monkeypatch: pytest.MonkeyPatch, given: str | None, env: str | None) -> None:
    from ray._private import ray_constants

    from jobs.ray_compat import init_ray

    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    flag_before = ray_constants.ENABLE_RAY_CLUSTER
    assert init_ray(given, 4) is True
    assert len(fake_ray_init) == 1, "no reaper for a cluster's raylet"
    call = fake_ray_init[0]
    assert call["kwargs"]["address"] == (given or env)
    assert "_node_ip_address" not in call["kwargs"]
    assert "num_cpus" not in call["kwargs"]
    assert call["cluster_flag"] == flag_before


# --- the reaper on its own (no Ray) -----------------------------------------------------


def test_reaper_kills_what_the_raylet_started_once_it_is_gone() -> None:
    from jobs.ray_compat import _REAPER

    if not sys.platform.startswith("linux"):
        pytest.skip("the reaper reads /proc")
    # A stand-in raylet whose child (an "agent") outlives it, as Ray's agents do for 60 s.
    raylet = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         "agent = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
         "print(agent.pid, flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, text=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    agent = psutil.Process(int(raylet.stdout.readline()))
    reaper = subprocess.Popen([sys.executable, "-S", "-c", _REAPER, str(raylet.pid)])
    try:
        time.sleep(2.0)  # its first look at the raylet's children
        assert reaper.poll() is None, "the reaper must wait while the raylet runs"
        raylet.kill()
        raylet.wait()
        assert reaper.wait(timeout=10) == 0
        deadline = time.monotonic() + 5
        while not gone(agent) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(agent), "the raylet's child outlived the reaper"
        assert bystander.poll() is None, "the reaper killed a process the raylet did not start"
    finally:
        for process in (raylet, bystander, reaper):
            process.kill()
            process.wait()
        raylet.stdout.close()
        try:
            agent.kill()
        except psutil.Error:
            pass


# --- the real embedded Ray ---------------------------------------------------------------

DRIVER = """
import os, sys, time
from jobs.ray_compat import init_ray
import ray

init_ray(None, 2)

@ray.remote
class Echo:
    def pid(self):
        return os.getpid()

@ray.remote
def square(x):
    return x * x

actors = [Echo.remote() for _ in range(2)]
ray.get([actor.pid.remote() for actor in actors])
ray.get([square.remote(i) for i in range(8)])
print("READY", flush=True)
time.sleep(600)
"""

HOLD_S = 4.0  # sampling after the workers are up
GONE_WITHIN_S = 20.0  # without the reaper Ray's two agents linger ~60 s after the driver


@dataclass
class EmbeddedRun:
    driver: int = 0
    sockets: set[Socket] = field(default_factory=set)
    members: dict[int, tuple[float, str]] = field(default_factory=dict)
    left: list[str] = field(default_factory=list)
    ready_after_s: float | None = None
    gone_after_s: float | None = None


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedRun:
    """Start init_ray's embedded Ray in a driver process, sample its sockets until a while
    after its workers are up, then `kill -9` the driver and watch its processes go."""
    folder = tmp_path_factory.mktemp("embedded")
    out, err = folder / "stdout", folder / "stderr"
    run = EmbeddedRun()
    with open(out, "w") as stdout, open(err, "w") as stderr:
        driver = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=REPO, env=cli_env(),
                                  stdout=stdout, stderr=stderr, start_new_session=True)
    run.driver = driver.pid
    try:
        started = time.monotonic()
        deadline, ready_at = started + 240, None
        while time.monotonic() < deadline and driver.poll() is None:
            processes = tree(driver.pid)
            record(processes, run.members)
            run.sockets |= listening(processes)
            if ready_at is None and "READY" in out.read_text():
                ready_at = time.monotonic()
            if ready_at is not None and time.monotonic() - ready_at > HOLD_S:
                break
            time.sleep(0.3)
        assert ready_at is not None, f"the driver did not get Ray going:\n{err.read_text()[-3000:]}"
        run.ready_after_s = ready_at - started
        record(tree(driver.pid), run.members)
        killed_at = time.monotonic()
        driver.kill()
        driver.wait()
        while time.monotonic() - killed_at < GONE_WITHIN_S + 5:
            run.left = alive(run.members)
            if not run.left:
                run.gone_after_s = time.monotonic() - killed_at
                break
            time.sleep(0.25)
        print(f"embedded Ray: workers up after {run.ready_after_s:.1f} s; "
              f"all gone {run.gone_after_s} s after the kill -9")
        return run
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        kill_members(run.members)


def test_embedded_ray_listens_on_loopback_only(embedded_run: EmbeddedRun) -> None:
    names = {name for name, *_ in embedded_run.sockets}
    # Not a vacuous pass: the core servers, the driver and the workers were all seen.
    assert {"gcs_server", "raylet"} <= names, sorted(embedded_run.sockets)
    assert any(pid == embedded_run.driver for _, pid, *_ in embedded_run.sockets), sorted(embedded_run.sockets)
    assert any(name.startswith("ray::") for name in names), sorted(embedded_run.sockets)
    assert exposed(embedded_run.sockets) == []


def test_nothing_outlives_a_kill_9_of_the_driver(embedded_run: EmbeddedRun) -> None:
    assert embedded_run.left == [], f"still running {GONE_WITHIN_S + 5:.0f} s after the kill"
    assert embedded_run.gone_after_s is not None and embedded_run.gone_after_s <= GONE_WITHIN_S


# --- a real job through the CLI ----------------------------------------------------------

JOB = """
name: nettest
seed: 0
source: {kind: digits, image_size: 16, color: gray}
split: {holdout: 0.2}
quota: {multiplier: 1.2}
augment:
  transforms:
    - {name: Affine, p: 0.9, params: {rotate: [-10, 10]}}
report: {enabled: false}
execution: {num_workers: 2, num_cpus: 2}
"""


@pytest.mark.slow
def test_a_cli_job_listens_on_loopback_only(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(JOB)
    err = tmp_path / "stderr"
    sockets: set[Socket] = set()
    members: dict[int, tuple[float, str]] = {}
    with open(err, "w") as stderr:
        job = subprocess.Popen(cli_command("run", str(config), "--out", str(tmp_path / "out")), cwd=REPO,
                               env=cli_env(), stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        watch(job, 540, 0.3, sockets, members)
        assert job.poll() == 0, err.read_text()[-3000:]
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
        kill_members(members)
    names = {name for name, *_ in sockets}
    assert {"gcs_server", "raylet"} <= names, sorted(sockets)
    assert any(name.startswith("ray::") for name in names), sorted(sockets)
    assert exposed(sockets) == []


# --- Ray Train's torch setup (no Ray started) ------------------------------------------


class FakeWorkerGroup:
    """Runs what a Train backend sends its workers here; `addresses` are their node addresses."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses

    def __len__(self) -> int:
        return len(self.addresses)

    def get_resources_per_worker(self) -> dict:
        return {"CPU": 1}

    def execute(self, func, *args, **kwargs) -> list:
        if func.__name__ == "_node_address":
            return list(self.addresses)
        raise AssertionError(f"{func.__name__} sent to the workers of a node that is not loopback")


@pytest.mark.parametrize("addresses, backend", [
    (["10.0.0.5", "10.0.0.6"], "gloo"),  # a cluster
    (["127.0.0.1", "10.0.0.6"], "nccl"),  # one worker elsewhere
    (["127.0.0.1", "127.0.0.1"], "hccl"),  # a backend left to Ray
])
def test_the_train_torch_config_leaves_ray_alone_off_a_loopback_node(
        monkeypatch: pytest.MonkeyPatch, addresses: list[str], backend: str) -> None:
    from ray.train.torch.config import _TorchBackend

    from jobs.ray_compat import train_torch_config

    config = train_torch_config()
    config.backend = backend
    calls = []
    monkeypatch.setattr(_TorchBackend, "on_start", lambda self, group, conf: calls.append((group, conf)))
    group = FakeWorkerGroup(addresses)
    config.backend_cls().on_start(group, config)
    assert calls == [(group, config)]


def test_the_loopback_store_listens_on_127_0_0_1_and_serves_a_process_group() -> None:
    import torch
    import torch.distributed as dist

    from jobs.ray_compat import _join_loopback_process_group, _open_loopback_store

    me = psutil.Process()

    def listeners(port: int) -> set[str]:
        return {conn.laddr.ip for conn in me.net_connections(kind="tcp")
                if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port}

    port = _open_loopback_store(1, 30)
    try:
        assert listeners(port) == {"127.0.0.1"}
        _join_loopback_process_group("gloo", 0, 1, port, 30)
        values = torch.ones(3)
        dist.all_reduce(values)
        assert values.tolist() == [1.0, 1.0, 1.0]
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert listeners(port) == set()


# --- a Ray Train fit with two workers (DDP over gloo) --------------------------------------

FIT_DRIVER = """
import os, sys
from pathlib import Path

import numpy as np

import jobs.fit
from augment.generators.family import DataShape, TrainingData
from jobs.config import StepConfig
from jobs.ray_compat import init_ray

out = Path(sys.argv[1])

def noting_the_store(loop):
    # Runs on each Train worker, where `jobs.fit.train_loop_per_worker` is the real loop.
    import ray.train
    rank = ray.train.get_context().get_world_rank()
    (out / f"rank-{rank}").write_text(f"{os.getpid()} {os.environ['MASTER_ADDR']} {os.environ['MASTER_PORT']}")
    jobs.fit.train_loop_per_worker(loop)

jobs.fit.train_loop_per_worker = noting_the_store  # what fit_step hands to TorchTrainer
init_ray(None, 2)
step = StepConfig.model_validate({
    "kind": "cgan", "train_workers": 2, "checkpoint_every": 2,
    "fit": {"steps": 4, "batch_size": 16, "g_channels": 8, "d_channels": 8, "z_dim": 8}})
rng = np.random.default_rng(0)
data = TrainingData(rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8), np.arange(64) % 2)
jobs.fit.fit_step(step, family_ref="augment.generators.cgan_family:CGANFamily", shape=DataShape(8, 1, ("a", "b")),
                  seed=0, data=data, sample_kwargs={}, folder=out / "cgan", num_gpus_per_worker=0.0,
                  licence="unknown")
import ray
ray.shutdown()
print("DONE", flush=True)
"""


@pytest.mark.slow
def test_a_two_worker_fit_listens_on_loopback_only(tmp_path: Path) -> None:
    """Rank 0 hosts torch.distributed's TCPStore on MASTER_PORT from the process group's setup
    to its end; torch would bind it to [::] (see `jobs.ray_compat.train_torch_config`)."""
    err = tmp_path / "stderr"
    sockets: set[Socket] = set()
    members: dict[int, tuple[float, str]] = {}
    with open(err, "w") as stderr:
        driver = subprocess.Popen([sys.executable, "-c", FIT_DRIVER, str(tmp_path)], cwd=REPO, env=cli_env(),
                                  stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True)
    try:
        watch(driver, 300, 0.05, sockets, members)  # the store lives a few seconds
        assert driver.poll() == 0, err.read_text()[-3000:]
        assert "DONE" in driver.stdout.read()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        driver.stdout.close()
        kill_members(members)
    assert (tmp_path / "cgan" / "model").is_dir()
    ranks = {path.name: path.read_text().split() for path in tmp_path.glob("rank-*")}
    assert sorted(ranks) == ["rank-0", "rank-1"]
    pid, address, port = ranks["rank-0"]
    assert {address for _, address, _ in ranks.values()} == {"127.0.0.1"}
    # Not a vacuous pass: rank 0's store was seen listening.
    store = {s for s in sockets if s[1] == int(pid) and s[2] == "tcp" and s[4] == int(port)}
    assert store, f"no listening socket on MASTER_PORT {port} of rank 0 ({pid}) seen: {sorted(sockets)}"
    print(f"rank 0's TCPStore: {sorted({(ip, port) for *_, ip, port in store})}")
    assert exposed(sockets) == []
