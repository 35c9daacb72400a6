"""Joining the processes of a pod into one JAX runtime, before anything touches a device.

Three ways to start, decided by what is given:

1. A coordinator address (``--coordinator HOST:PORT`` or ``KOBART_COORDINATOR``): an
   explicit cluster, e.g. the CPU pod simulator. ``--num_processes`` / ``--process_id``
   (or ``KOBART_NUM_PROCESSES`` / ``KOBART_PROCESS_ID``) must come with it.
2. No coordinator, on a Cloud TPU VM (libtpu installed): ``jax.distributed.initialize()``
   finds the workers, their ids and the coordinator by itself. A one-host TPU VM joins a
   cluster of one.
3. Otherwise: a single process; nothing to join.

Flags win over environment variables. :func:`initialize` must run before any other JAX
call: the runtime's device list is fixed by the first one.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

from kobart_flax.config import ConfigError

logger = logging.getLogger(__name__)

ENV_COORDINATOR = "KOBART_COORDINATOR"
ENV_NUM_PROCESSES = "KOBART_NUM_PROCESSES"
ENV_PROCESS_ID = "KOBART_PROCESS_ID"
ENV_TIMEOUT = "KOBART_INIT_TIMEOUT"
# Long enough for the slowest TPU worker to boot its Python; a missing peer fails after it.
DEFAULT_TIMEOUT_SECONDS = 300
# JAX's own timeout aborts the process; ours, this much earlier, exits with a message.
JAX_TIMEOUT_MARGIN_SECONDS = 30
JOIN_FAILED_EXIT_CODE = 2  # as for a bad config: the launch is the user's to fix


class DistributedError(RuntimeError):
    """The processes could not form a cluster; the message says which and what to check."""


@dataclasses.dataclass(frozen=True)
class ClusterOptions:
    coordinator: str | None = None  # HOST:PORT of process 0's coordination service
    num_processes: int | None = None
    process_id: int | None = None
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "multi-process (not needed on TPU VMs, where JAX finds the workers itself)"
    )
    group.add_argument("--coordinator", help=f"HOST:PORT of process 0 (env {ENV_COORDINATOR})")
    group.add_argument(
        "--num_processes", type=int, help=f"processes in the run (env {ENV_NUM_PROCESSES})"
    )
    group.add_argument(
        "--process_id", type=int, help=f"this process, 0-based (env {ENV_PROCESS_ID})"
    )
    group.add_argument(
        "--init_timeout",
        type=int,
        help=f"seconds to wait for every process to join (env {ENV_TIMEOUT}, "
        f"default {DEFAULT_TIMEOUT_SECONDS})",
    )


def options_from(args: argparse.Namespace, environ: dict[str, str] | None = None) -> ClusterOptions:
    """Parsed flags, falling back to the KOBART_* environment variables."""
    environ = os.environ if environ is None else environ

    def pick(flag_value, env_name: str, kind: type):
        if flag_value is not None:
            return flag_value
        text = environ.get(env_name)
        if text is None or not text.strip():
            return None
        try:
            return kind(text)
        except ValueError:
            raise DistributedError(f"{env_name}={text!r}: expected {kind.__name__}") from None

    timeout = pick(args.init_timeout, ENV_TIMEOUT, int)
    return ClusterOptions(
        coordinator=pick(args.coordinator, ENV_COORDINATOR, str),
        num_processes=pick(args.num_processes, ENV_NUM_PROCESSES, int),
        process_id=pick(args.process_id, ENV_PROCESS_ID, int),
        timeout_seconds=DEFAULT_TIMEOUT_SECONDS if timeout is None else timeout,
    )


def running_on_tpu_vm() -> bool:
    """libtpu is what requirements-tpu.txt installs, and only TPU VMs need it."""
    return importlib.util.find_spec("libtpu") is not None


def initialize(options: ClusterOptions) -> None:
    """Joins this process to its cluster (see the module docstring for the three cases)."""
    if options.timeout_seconds <= 0:
        raise DistributedError(f"init timeout must be positive, got {options.timeout_seconds}")
    if options.coordinator is None:
        if options.num_processes not in (None, 1) or options.process_id not in (None, 0):
            raise DistributedError(
                "--num_processes/--process_id need --coordinator HOST:PORT "
                f"(or {ENV_COORDINATOR}) to say where process 0 listens"
            )
        if running_on_tpu_vm():
            logger.info("joining the TPU pod (workers found by jax.distributed)")
            _join(options, jax.distributed.initialize, "the TPU workers")
        return
    _check_explicit(options)
    logger.info(
        "process %d of %d joining the coordinator at %s",
        options.process_id,
        options.num_processes,
        options.coordinator,
    )

    def join_explicit(initialization_timeout: int) -> None:
        jax.distributed.initialize(
            options.coordinator,
            num_processes=options.num_processes,
            process_id=options.process_id,
            initialization_timeout=initialization_timeout,
        )

    _join(options, join_explicit, f"the coordinator at {options.coordinator}")


def _check_explicit(options: ClusterOptions) -> None:
    if options.num_processes is None or options.process_id is None:
        raise DistributedError(
            f"--coordinator {options.coordinator} needs --num_processes and --process_id "
            f"(or {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID})"
        )
    if options.num_processes < 1:
        raise DistributedError(f"--num_processes={options.num_processes}: must be >= 1")
    if not 0 <= options.process_id < options.num_processes:
        raise DistributedError(
            f"--process_id={options.process_id}: must be in [0, {options.num_processes})"
        )


def _join(options: ClusterOptions, join, where: str) -> None:
    """Runs ``join`` under a watchdog that turns a missing peer into a readable exit.

    When a peer never arrives, jaxlib does not raise: its coordination client aborts the
    whole process with a C++ stack trace. So JAX gets a slightly longer timeout than ours,
    and a thread (``join`` releases the GIL while it waits) reports first and exits.
    """
    who = "" if options.process_id is None else f"process {options.process_id}: "
    expected = "" if options.num_processes is None else f" of {options.num_processes}"
    message = (
        f"{who}could not join {where} within {options.timeout_seconds} s: not every "
        f"process{expected} arrived. Check that all of them were started, with the same "
        "coordinator address and process count and distinct process ids, and that the "
        "coordinator's port is reachable"
    )
    joined = threading.Event()

    def watchdog() -> None:
        if not joined.wait(options.timeout_seconds):
            logger.error("%s", message)
            logging.shutdown()  # flush: os._exit skips every handler
            os._exit(JOIN_FAILED_EXIT_CODE)

    threading.Thread(target=watchdog, name="join-watchdog", daemon=True).start()
    try:
        join(initialization_timeout=options.timeout_seconds + JAX_TIMEOUT_MARGIN_SECONDS)
    except Exception as error:  # jaxlib raises its own XlaRuntimeError types here
        raise DistributedError(f"{message} ({type(error).__name__}: {error})") from error
    finally:
        joined.set()
    logger.info(
        "process %d of %d joined: %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def check_topology(expected_processes: int, expected_devices: int) -> None:
    """Stops a run started on another topology than its config was written for (0: any).

    A config tuned for a v4-32 (batch, mesh, memory) would otherwise run on whatever it
    found, or fail much later in a collective or out of memory.
    """
    processes, devices = jax.process_count(), jax.device_count()
    wrong = []
    if expected_processes and processes != expected_processes:
        wrong.append(f"{expected_processes} processes (this run has {processes})")
    if expected_devices and devices != expected_devices:
        wrong.append(f"{expected_devices} devices (this run has {devices})")
    if wrong:
        raise ConfigError(
            f"the config expects {' and '.join(wrong)}, on {jax.devices()[0].platform}: "
            "start it on the topology it was written for, or override "
            "mesh.expected_processes / mesh.expected_devices (0 = don't check)"
        )


def sum_over_processes(values: np.ndarray) -> np.ndarray:
    """Element-wise sum of a host-local array over all processes, returned to every one.

    A collective: every process must call it, with the same shape. Float values travel as
    float32 (jax's default precision).
    """
    if jax.process_count() == 1:
        return values
    # [processes, ...] --> [...]
    return np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)
