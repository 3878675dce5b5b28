"""Training in several processes with torch.distributed: which process this is, the collectives the
run needs (sums of metrics, agreed stops, rank 0's objects), and ``launch``, which starts the
processes of ``--devices N`` through torch's own elastic launcher (what ``torchrun`` runs).

One process per GPU (nccl) or per group of CPU cores (gloo). Only rank 0 writes the run
directory; every rank trains on its own part of each epoch and takes part in every evaluation.
Outside a distributed run every function here is a no-op, so the single-process path is unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass
from datetime import timedelta

import torch

from augpipe.errors import AugpipeError, ConfigError
from augpipe.errors import first_line as _first_line

log = logging.getLogger("augpipe")

# Seconds rank 0 may spend opening and decoding the data set while the other ranks wait for it:
# a first scan of an ImageNet-sized folder takes most of an hour on few cores.
DATA_TIMEOUT_S = 6 * 3600


class DistributedError(AugpipeError):
    """A rank failed, or the processes stopped hearing from each other."""


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def launched_ranks() -> Ranks:
    """The ranks torchrun (or ``launch``) put in the environment; one process when there are none."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return Ranks(
            int(os.environ.get("RANK", "0")),
            world,
            int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ.get("LOCAL_WORLD_SIZE", str(world))),
        )
    except ValueError:
        raise ConfigError("WORLD_SIZE, RANK, LOCAL_RANK must be whole numbers (set by torchrun)") from None


_state = {"ranks": Ranks(), "data_group": None}


def ranks() -> Ranks:
    """This process's place in the run (rank 0 of 1 outside a distributed run)."""
    return _state["ranks"]


def start(device_type: str, timeout_s: float) -> Ranks:
    """Join the process group that the environment describes (gloo on CPUs, nccl on CUDA), unless
    there is none or it is joined already. Collectives that wait longer than ``timeout_s`` fail
    with a ``DistributedError`` instead of hanging when a rank has died."""
    import torch.distributed as dist

    env = launched_ranks()
    if not env.active or dist.is_initialized():
        if dist.is_initialized():
            _state["ranks"] = Ranks(dist.get_rank(), dist.get_world_size(), env.local_rank, env.local_world_size)
        return _state["ranks"]
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        # torchrun starts as many processes as it is told, whatever the GPUs: one without a GPU
        # of its own is one line, not CUDA's "invalid device ordinal" traceback.
        have = torch.cuda.device_count()
        if env.local_rank >= have:
            raise DistributedError(
                f"rank {env.rank}: local rank {env.local_rank} has no CUDA device of its own "
                f"(this machine has {have}): start at most {have} process(es) per machine, "
                f"or train on the CPU with --device cpu"
            )
        torch.cuda.set_device(env.local_rank)
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        # A group of its own for the data phase: rank 0 decodes while the others wait far longer
        # than any training step may take.
        _state["data_group"] = dist.new_group(backend="gloo", timeout=timedelta(seconds=DATA_TIMEOUT_S))
    except (RuntimeError, ValueError) as err:
        raise DistributedError(
            f"rank {env.rank}: could not join the other {env.world_size - 1} process(es) ({_first_line(err)})"
        ) from None
    _state["ranks"] = env
    return env


def stop() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _state["ranks"], _state["data_group"] = Ranks(), None


def _collective(fn, *args, **kwargs):
    """Run a collective; a peer that died or stopped answering is a DistributedError naming this
    rank, not a hang or a C++ traceback."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as err:
        raise lost_contact_error(err) from None


def lost_contact(err: BaseException) -> bool:
    """Whether ``err`` is a collective's failure (a peer gone), also one raised inside DDP's
    gradient reduction, where no call of ours wraps it."""
    import torch.distributed as dist

    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(
        w in text for w in ("gloo", "nccl", "connection closed", "connection reset", "timed out")
    )


def lost_contact_error(err: BaseException) -> DistributedError:
    me = ranks()
    return DistributedError(
        f"rank {me.rank} of {me.world_size}: lost contact with the other processes "
        f"({_first_line(err)}); another rank has probably died: see its error"
    )


def barrier_for_data() -> None:
    """Wait (up to DATA_TIMEOUT_S) until every rank reaches this point."""
    import torch.distributed as dist

    if ranks().active:
        _collective(dist.barrier, group=_state["data_group"])


def broadcast_object(obj, *, data_phase: bool = False):
    """Rank 0's ``obj`` on every rank (a pickle between this run's own processes, never a file)."""
    import torch.distributed as dist

    if not ranks().active:
        return obj
    box = [obj if ranks().is_main else None]
    group = _state["data_group"] if data_phase else _object_group()
    _collective(dist.broadcast_object_list, box, src=0, group=group)
    return box[0]


def _object_group():
    # Objects travel through gloo on the CPU also when training runs on nccl.
    return _state["data_group"]


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over the ranks, in place (returned for chaining)."""
    import torch.distributed as dist

    if ranks().active:
        _collective(dist.all_reduce, tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_(flag: bool, device="cpu") -> bool:
    """True on every rank when it is True on any: stops must be agreed, or the ranks that go on
    wait forever for the ones that stopped."""
    if not ranks().active:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    return bool(sum_(t).item() > 0)


def check_devices(devices: int, device_type: str) -> None:
    """``--devices N`` must fit the machine: N GPUs on CUDA, N cores' worth of CPU processes."""
    if device_type == "cuda":
        have = torch.cuda.device_count()
        if devices > have:
            raise ConfigError(f"--devices {devices}: this machine has {have} CUDA device(s)")
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if devices > cores:
        raise ConfigError(
            f"--devices {devices}: this machine has {cores} CPU core(s), and each CPU process "
            f"needs one; give at most --devices {cores}"
        )


def _quiet_launcher_logs() -> None:
    # The launcher logs each failed process's traceback itself; augpipe says it in one line.
    import torch.distributed.elastic.agent.server.api  # noqa: F401 (its logger, set up with a level of its own)

    prefixes = ("torch.distributed.elastic", "torch.distributed.launcher", "torch.multiprocessing")
    # torch gives some of these loggers a level of their own, which a parent's level does not
    # override ("Received 15 death signal, shutting down workers" on a stop signal).
    names = [n for n in logging.root.manager.loggerDict if n.startswith(prefixes)]
    for name in (*prefixes, *names):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _run_rank(target, args, kwargs, verbose: bool):
    """The entry point of each launched process."""
    from augpipe.cli.main import setup_logging

    setup_logging(verbose)
    me = launched_ranks()
    if me.rank != 0:
        logging.getLogger("augpipe").setLevel(logging.WARNING)
    try:
        return target(*args, **kwargs)
    except AugpipeError as err:
        # The launcher reports "TypeName: message"; the name of augpipe's own errors says nothing.
        raise RuntimeError(f"augpipe: {err}") from None


def launch(devices: int, target, *args, **kwargs):
    """Run ``target(*args, **kwargs)`` in ``devices`` processes on this machine, with the
    environment torchrun gives (RANK, WORLD_SIZE, MASTER_ADDR ...), and return rank 0's result.
    ``target`` must be importable by name (the processes are spawned). A rank that fails ends
    every rank at once, and the error names it."""
    from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from augpipe.training.signals import Interrupted

    _quiet_launcher_logs()
    verbose = logging.getLogger("augpipe").getEffectiveLevel() <= logging.DEBUG
    with launcher_scratch() as scratch:
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=devices,
            run_id=f"augpipe-{uuid.uuid4().hex[:8]}",
            rdzv_backend="c10d",
            rdzv_endpoint="127.0.0.1:0",
            max_restarts=0,
            monitor_interval=0.2,
            start_method="spawn",
            logs_specs=DefaultLogsSpecs(log_dir=scratch),
        )
        try:
            results = elastic_launch(config, _run_rank)(target, args, kwargs, verbose)
        except ChildFailedError as err:
            raise DistributedError(describe_failure(err)) from None
        except SignalException as err:
            # The launcher passed the signal on to the ranks and waited for them: rank 0 has saved
            # last.pt and written the summary. The exit code is the signal's (130/143), as alone.
            raise Interrupted(signal_name(err.sigval)) from None
    return results[0]


@contextlib.contextmanager
def launcher_scratch():
    """A folder for what the launcher writes beside the run, removed afterwards. Left to itself
    it leaves a ``torchelastic_*`` folder in the system's temporary folder on every launch, and a
    ``pytorch-errorfile-*.pickle`` for every rank that fails."""
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="augpipe-launch-") as scratch:
        # torch.multiprocessing names its error files with tempfile, in this process.
        tempfile.tempdir = scratch
        try:
            yield scratch
        finally:
            tempfile.tempdir = previous


def signal_name(sigval) -> str:
    import signal

    try:
        return signal.Signals(sigval).name
    except ValueError:
        return "SIGTERM"


def describe_failure(err) -> str:
    """One line for the first rank that failed: its own error, or how it died."""
    rank, failure = min(err.failures.items(), key=lambda kv: (kv[1].timestamp, kv[0]))
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    message = str(message or "").strip().splitlines()[0] if str(message or "").strip() else ""
    if message.startswith("RuntimeError: augpipe: "):
        return f"rank {rank}: {message[len('RuntimeError: augpipe: ') :]}"
    detail = message if message and "To enable traceback" not in message else ""
    if failure.exitcode is not None and failure.exitcode < 0:
        how, detail = f"was killed by {failure.signal_name()}", ""
    else:
        how = f"exited with code {failure.exitcode}"
    return f"rank {rank} {how}{': ' + detail if detail else ''}; the other ranks were stopped"
