"""Every Ray spelling that changes between releases lives here.

In Ray 2.60 `map_batches(concurrency=)` is deprecated in favour of
`compute=ActorPoolStrategy(...)`; older releases only know `concurrency`.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import ipaddress
import logging
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import ray
import ray.data


# A pool actor that dies (its process killed, its node lost) is restarted this many times,
# and the batch it held is run again this many times: bounded, so that a batch that kills its
# worker every time (out of memory) fails the job, which a rerun resumes, instead of looping.
ACTOR_MAX_RESTARTS = 4
ACTOR_MAX_TASK_RETRIES = 4


def actor_pool(size: int) -> dict[str, Any]:
    """Keyword arguments for `map_batches` that run a callable class on `size` actors, each
    restarted (and its batch run again) when it dies: `ACTOR_MAX_RESTARTS`,
    `ACTOR_MAX_TASK_RETRIES`. Exceptions raised by our own code are not retried here (the
    shard worker retries those itself, `execution.max_retries`).

    Ray 2.60's core worker logs one `core_worker.cc` ERROR line per pool actor ("has
    constructor arguments in the object store and max_restarts > 0", ray-project/ray#53727,
    #57733): Ray Data hands every pool actor its transformer as an object reference, owned by
    the driver and kept on the driver's node, so a restart on another node finds it as long
    as the driver lives.
    """
    _quiet_remote_args_deprecation()
    restarts = {"max_restarts": ACTOR_MAX_RESTARTS, "max_task_retries": ACTOR_MAX_TASK_RETRIES}
    strategy = getattr(ray.data, "ActorPoolStrategy", None)
    if strategy is not None:
        return {"compute": strategy(size=size), **restarts}
    return {"concurrency": size, **restarts}


@functools.cache
def _quiet_remote_args_deprecation() -> None:
    """Ray 2.60 deprecates passing remote arguments such as `max_restarts` to `map_batches`
    (removal planned for 2.64) and names no replacement for it; the warning tells a user of
    the job nothing, so it is ignored for calls made from this package (`jobs.*`) only."""
    warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated", category=DeprecationWarning,
                            module=r"jobs\.")


def quiet_data_context() -> None:
    """Ray Data's own progress bars would interleave with ours; we report progress."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    if hasattr(context, "print_on_execution_start"):
        context.print_on_execution_start = False
    # Per-execution INFO lines and the "progress bars disabled" notice are noise here.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Join `address` (or $RAY_ADDRESS), else start an embedded local Ray.

    The embedded Ray starts no dashboard and is a loopback-only node: every server of it
    (GCS, raylet and its object manager, driver and worker gRPC servers, runtime-env and
    dashboard agents, metrics exporter) listens on 127.0.0.1 (see `embedded_ray_kwargs`).
    Ray's token authentication stays on (on by default since 2.5x). Joining a cluster
    changes nothing of Ray's own network setup. Ray Train fits get `train_torch_config()`,
    whose rank 0 TCPStore listens on 127.0.0.1 on the embedded node (torch alone would
    bind it to the wildcard address whatever MASTER_ADDR is).
    Returns True when this call started Ray (so the caller shuts it down).
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    common: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": True}
    if address:
        ray.init(address=address, **common)
    else:
        start_embedded_ray(num_cpus, **common)
    return True


def start_embedded_ray(num_cpus: int | None, **init_kwargs: Any) -> None:
    """Start the embedded Ray: a fresh single-machine node (address="local" never joins a
    `ray start` cluster that happens to run here) whose servers listen on 127.0.0.1 only,
    plus the reaper of its agents. `init_kwargs` go to `ray.init` (logging and the like)."""
    global _embedded
    with _single_machine_node():
        ray.init(**embedded_ray_kwargs(num_cpus), **init_kwargs)
    _embedded = True
    start_raylet_reaper()


_embedded = False  # this process started the Ray it runs on (no dashboard, one machine)


LOOPBACK = "127.0.0.1"


def embedded_ray_kwargs(num_cpus: int | None) -> dict[str, Any]:
    """`ray.init` arguments of the embedded single-machine Ray (use within
    `_single_machine_node()`): no dashboard, node address 127.0.0.1.

    Ray binds every server of a node to loopback when, and only when, the node's address is
    a loopback address (Ray 2.60: `GrpcServer(..., listen_to_localhost_only=<node ip is
    localhost>)` in gcs_server, raylet and core workers; `dashboard/agent.py` and
    `dashboard/modules/reporter/reporter_agent.py` test `is_localhost(ip)`; the runtime-env
    agent binds the node address itself). Otherwise they listen on 0.0.0.0/[::].
    """
    return {
        "address": "local",
        "num_cpus": num_cpus,
        "include_dashboard": False,
        "_node_ip_address": LOOPBACK,
    }


@contextlib.contextmanager
def _single_machine_node() -> Iterator[None]:
    """Keep `_node_ip_address="127.0.0.1"` as it is while `ray.init` starts the node.

    On Linux `ray.init` replaces a loopback `_node_ip_address` by this machine's LAN address
    (`services.resolve_ip_for_localhost` -> `get_node_ip_address`, which keeps loopback only
    when `ray_constants.ENABLE_RAY_CLUSTER` is false: the $RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    switch, read once when ray is imported, false by default on macOS/Windows). The flag is
    read at call time, so it is lowered for the duration of the call only; nothing is put
    in the environment, so neither Ray's processes nor a later cluster join see it. Once the
    node runs, `get_node_ip_address()` answers the node's own address (127.0.0.1).
    """
    try:
        from ray._private import ray_constants as constants
    except ImportError:
        constants = None
    if constants is None or not hasattr(constants, "ENABLE_RAY_CLUSTER"):
        yield  # another Ray layout: `_node_ip_address` alone
        return
    before = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = before


# Run by `start_raylet_reaper` (python -S: nothing imported but os/sys/time/signal).
_REAPER = r"""
import os, signal, sys, time

def stat(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1]), int(fields[19])  # state, ppid, start time

raylet = int(sys.argv[1])
born = stat(raylet)
children = {}
tick = 0
while born is not None:
    now = stat(raylet)
    if now is None or now[2] != born[2] or now[0] in (b"Z", b"X"):
        break
    if tick % 10 == 0:  # the agents start with the raylet; a /proc scan costs a few ms
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) not in children:
                info = stat(int(name))
                if info is not None and info[1] == raylet:
                    children[int(name)] = info[2]
    tick += 1
    time.sleep(0.5)
for pid, start in children.items():
    info = stat(pid)
    if info is not None and info[2] == start:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


def start_raylet_reaper() -> subprocess.Popen | None:
    """Kill what the embedded raylet started once the raylet is gone.

    After a `kill -9` of the driver, the kernel kills gcs_server and raylet at once (Ray
    sets PR_SET_PDEATHSIG on them) and the workers exit within a second, but the dashboard
    and runtime-env agents see the raylet die, then try for 60 s to tell the dead GCS
    (`report_raylet_error_logs` -> `publish_error_to_driver(..., timeout 60)` in
    ray/_private/process_watcher.py and ray/_private/utils.py) before exiting, still
    listening meanwhile. This small process (no Ray import) notes the raylet's children
    while the raylet runs and SIGKILLs those still alive when it ends (on a clean
    `ray.shutdown()` there are none left). Linux only (/proc); elsewhere nothing is started.
    """
    if not sys.platform.startswith("linux"):
        return None
    raylet = _child_named("raylet")
    if raylet is None:
        return None
    _reapers[:] = [r for r in _reapers if r.poll() is None]  # collect the finished ones
    reaper = subprocess.Popen(
        [sys.executable, "-S", "-c", _REAPER, str(raylet)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the terminal's group must not stop it first
    )
    _reapers.append(reaper)  # referenced, so no "still running" ResourceWarning on collection
    return reaper


_reapers: list[subprocess.Popen] = []


def _child_named(comm: str) -> int | None:
    """The newest child process of this one named `comm` (Linux /proc), or None."""
    me, best = os.getpid(), None
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                head, _, rest = f.read().rpartition(b")")
        except OSError:
            continue
        fields = rest.split()
        if head.split(b"(", 1)[-1] == comm.encode() and int(fields[1]) == me:
            start = int(fields[19])
            if best is None or start > best[0]:
                best = (start, int(name))
    return None if best is None else best[1]


PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


@contextlib.contextmanager
def quiet_train_fit() -> Iterator[None]:
    """Around `TorchTrainer.fit()`: Ray Train's preemption watcher off, unless the user set
    $RAY_TRAIN_ENABLE_PREEMPTION_WATCHER.

    Ray Train 2.60's controller starts a `PreemptionWatcher` actor (max_restarts=-1, the
    worker actors' handles as constructor arguments) that only logs node drains; creating it
    makes the controller's core worker print the `core_worker.cc` ERROR line about actor
    constructor arguments in the object store (ray-project/ray#53727) on every fit. Ray Train
    reads the variable from the driver's environment when `fit()` starts the controller, so
    it is set for the call only (Ray's own processes, started earlier, never see it).
    """
    if PREEMPTION_WATCHER_ENV in os.environ:
        yield
        return
    os.environ[PREEMPTION_WATCHER_ENV] = "0"
    try:
        yield
    finally:
        os.environ.pop(PREEMPTION_WATCHER_ENV, None)


def without_placement_group_cleaner(trainer: Any) -> None:
    """On the embedded Ray, leave Ray Train 2.60's placement-group cleaner out of `trainer`.

    The cleaner is a detached actor that asks the state API once a second whether the fit's
    controller still lives, to free its placement group should the driver die. The state API
    is served by the dashboard, which the embedded Ray does not start: the cleaner then logs
    a warning every second of every fit, or, when a second Ray runs on the machine, dies
    with a traceback ("Found multiple active Ray instances"). The embedded Ray ends with its
    driver, placement groups included, so there is nothing for it to clean. On a joined
    cluster it stays.
    """
    create = getattr(trainer, "_create_default_callbacks", None)
    if not _embedded or create is None:
        return

    def callbacks() -> list[Any]:
        return [c for c in create() if type(c).__name__ != "PlacementGroupCleanerCallback"]

    trainer._create_default_callbacks = callbacks


# --- Ray Train's torch process group on a loopback node -----------------------------------
#
# Ray Train's `_TorchBackend.on_start` (ray/train/torch/config.py, Ray 2.60) takes rank 0's
# `get_address_and_port()` (the node address, a free port) as MASTER_ADDR/MASTER_PORT and
# has every worker call `dist.init_process_group(init_method="env://")`. Torch's rendezvous
# then makes rank 0 host the TCPStore (`_create_c10d_store`: `TCPStore(hostname, port,
# is_master=rank == 0, multi_tenant=True)`), and a store server that torch binds itself
# listens on the wildcard address ([::]) whatever `hostname` is. Torch listens on a socket
# the caller bound instead when given `master_listen_fd`. So on a loopback node rank 0 binds
# 127.0.0.1 itself, hosts the store on that socket, and every rank passes its store to
# `init_process_group(store=...)`; the gloo/NCCL sockets were on the node address already.


def train_torch_config() -> Any:
    """`TorchTrainer(torch_config=...)`: Ray's `TorchConfig()`, except that when every Train
    worker runs on a loopback node (the embedded Ray) rank 0's torch.distributed TCPStore
    listens on 127.0.0.1 instead of [::]. Elsewhere (a real cluster, a backend other than
    gloo/NCCL, another Ray layout) Ray's own setup runs unchanged."""
    classes = _loopback_torch_classes()
    if classes is None:
        from ray.train.torch import TorchConfig

        return TorchConfig()
    return classes[0]()


def __getattr__(name: str) -> Any:
    """`LoopbackTorchConfig` and `_LoopbackTorchBackend`, built on first use: they subclass
    Ray Train's torch classes, and importing those (torch with them) costs seconds that jobs
    without a generator should not pay. Ray pickles them by name, so Ray Train's controller
    and workers find them here too."""
    if name in ("LoopbackTorchConfig", "_LoopbackTorchBackend"):
        classes = _loopback_torch_classes()
        if classes is not None:
            return classes[0] if name == "LoopbackTorchConfig" else classes[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _loopback_torch_classes() -> tuple[type, type] | None:
    """(LoopbackTorchConfig, _LoopbackTorchBackend), or None in a Ray without the names used."""
    try:
        from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
        from ray.train.torch.config import TorchConfig, _set_torch_distributed_env_vars, _TorchBackend
    except ImportError:
        return None

    class _LoopbackTorchBackend(_TorchBackend):
        def on_start(self, worker_group: Any, backend_config: Any) -> None:
            backend = backend_config.backend or _default_torch_backend(worker_group)
            if (backend_config.init_method not in ("env", "tcp") or not _gloo_or_nccl(backend)
                    or not all(_is_loopback(a) for a in worker_group.execute(_node_address))):
                super().on_start(worker_group, backend_config)
                return
            world_size = len(worker_group)
            port = worker_group.execute_single(0, _open_loopback_store, world_size, backend_config.timeout_s)
            # What the "env" method sets, for code that reads them (there is no store to create).
            worker_group.execute(_set_master_env, LOOPBACK, port)
            if not isinstance(worker_group, V1WorkerGroup):  # as Ray does: V1 sets them later
                worker_group.execute(_set_torch_distributed_env_vars)
            ray.get([worker_group.execute_single_async(rank, _join_loopback_process_group, backend, rank,
                                                       world_size, port, backend_config.timeout_s)
                     for rank in range(world_size)])

    class LoopbackTorchConfig(TorchConfig):
        @property
        def backend_cls(self) -> type:
            return _LoopbackTorchBackend

    for cls in (LoopbackTorchConfig, _LoopbackTorchBackend):
        cls.__qualname__ = cls.__name__  # pickled by reference: `__getattr__` above answers it
    return LoopbackTorchConfig, _LoopbackTorchBackend


def _default_torch_backend(worker_group: Any) -> str:
    """Ray's choice when `TorchConfig.backend` is None (V2's TorchTrainer fills it in first)."""
    resources = worker_group.get_resources_per_worker()
    if resources.get("GPU", 0) > 0:
        return "nccl"
    return "tpu_dist" if resources.get("TPU", 0) > 0 else "gloo"


def _gloo_or_nccl(backend: str) -> bool:
    """"gloo", "nccl" or a device list of them ("cpu:gloo,cuda:nccl")."""
    return all(part.rpartition(":")[2] in ("gloo", "nccl") for part in backend.split(","))


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name
        return False


def _node_address() -> str:
    return ray.util.get_node_ip_address()


def _set_master_env(address: str, port: int) -> None:
    os.environ["MASTER_ADDR"] = address
    os.environ["MASTER_PORT"] = str(port)


_loopback_store: Any = None  # rank 0's store server, from `_open_loopback_store` to its process group


def _open_loopback_store(world_size: int, timeout_s: float) -> int:
    """On rank 0: host a TCPStore on a socket bound to 127.0.0.1; returns its port."""
    global _loopback_store
    import torch.distributed as dist

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]
    except OSError:
        sock.close()
        raise
    # The store's server owns the descriptor from here on (listens on it, closes it).
    _loopback_store = dist.TCPStore(LOOPBACK, port, world_size, is_master=True,
                                    timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False,
                                    master_listen_fd=sock.detach())
    return port


def _join_loopback_process_group(backend: str, world_rank: int, world_size: int, port: int,
                                 timeout_s: float) -> None:
    """`_setup_torch_process_group` with a given store: rank 0's own, a client elsewhere."""
    global _loopback_store
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    if world_rank == 0:
        store, _loopback_store = _loopback_store, None  # the process group keeps it alive
    else:
        store = dist.TCPStore(LOOPBACK, port, world_size, is_master=False, timeout=timeout)
    if "nccl" in backend and not {"TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_BLOCKING_WAIT"} & set(os.environ):
        os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1"  # as Ray: fail on a timed-out collective
    dist.init_process_group(backend=backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)
