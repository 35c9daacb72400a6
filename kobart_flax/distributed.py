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

Once joined, the processes watch each other (:class:`PeerWatchdog`): a process that dies takes
its peers down with one line naming it, within ``--heartbeat_timeout`` seconds, instead of
leaving them in a collective until JAX's own timeout aborts them with C++ stack traces.

A preemption notice (SIGTERM) is also a cluster matter: :class:`PreemptionWatcher` says after
which step every process saves and stops, the same step on every host.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import importlib.util
import logging
import os
import signal
import threading
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)

ENV_COORDINATOR = "KOBART_COORDINATOR"
ENV_NUM_PROCESSES = "KOBART_NUM_PROCESSES"
ENV_PROCESS_ID = "KOBART_PROCESS_ID"
ENV_TIMEOUT = "KOBART_INIT_TIMEOUT"
ENV_HEARTBEAT_TIMEOUT = "KOBART_HEARTBEAT_TIMEOUT"
# Long enough for the slowest TPU worker to boot its Python; a missing peer fails after it.
DEFAULT_TIMEOUT_SECONDS = 300
# JAX's own timeout aborts the process; ours, this much earlier, exits with a message.
JAX_TIMEOUT_MARGIN_SECONDS = 30
JOIN_FAILED_EXIT_CODE = 2  # as for a bad config: the launch is the user's to fix
# A live process beats every few seconds even while it compiles or waits in a collective (a
# thread of its own), so a minute of silence means a dead or frozen host; JAX's own default,
# 100 s, ends in an abort with stack traces instead of a message.
DEFAULT_HEARTBEAT_TIMEOUT_SECONDS = 60
PEER_LOST_EXIT_CODE = 3  # not the user's input: rerunning the same command resumes
# Processes leave together (see PeerWatchdog.exit_together); process 0 writes the final model
# alone meanwhile. JAX's own shutdown barrier waits as long.
EXIT_BARRIER_TIMEOUT_SECONDS = 300
KEY_PREFIX = "kobart_flax/"  # in the coordination service's key-value store
HEARTBEAT_KEY_PREFIX = f"{KEY_PREFIX}heartbeat/"  # + process id: a count that each beat raises
VERDICT_KEY = "lost"  # under KEY_PREFIX, + "/" + process id: whom that process found silent
EXIT_BARRIER = f"{KEY_PREFIX}exit"


class DistributedError(RuntimeError):
    """The processes could not form a cluster; the message says which and what to check."""


@dataclasses.dataclass(frozen=True)
class ClusterOptions:
    coordinator: str | None = None  # HOST:PORT of process 0's coordination service
    num_processes: int | None = None
    process_id: int | None = None
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    heartbeat_timeout_seconds: int = DEFAULT_HEARTBEAT_TIMEOUT_SECONDS


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
    group.add_argument(
        "--heartbeat_timeout",
        type=int,
        help="seconds of silence after which a process is taken for dead and the others exit "
        f"(env {ENV_HEARTBEAT_TIMEOUT}, default {DEFAULT_HEARTBEAT_TIMEOUT_SECONDS})",
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
    heartbeat_timeout = pick(args.heartbeat_timeout, ENV_HEARTBEAT_TIMEOUT, int)
    return ClusterOptions(
        coordinator=pick(args.coordinator, ENV_COORDINATOR, str),
        num_processes=pick(args.num_processes, ENV_NUM_PROCESSES, int),
        process_id=pick(args.process_id, ENV_PROCESS_ID, int),
        timeout_seconds=DEFAULT_TIMEOUT_SECONDS if timeout is None else timeout,
        heartbeat_timeout_seconds=(
            DEFAULT_HEARTBEAT_TIMEOUT_SECONDS if heartbeat_timeout is None else heartbeat_timeout
        ),
    )


def running_on_tpu_vm() -> bool:
    """libtpu is what requirements-tpu.txt installs, and only TPU VMs need it."""
    return importlib.util.find_spec("libtpu") is not None


def initialize(options: ClusterOptions) -> None:
    """Joins this process to its cluster (see the module docstring for the three cases)."""
    if options.timeout_seconds <= 0:
        raise DistributedError(f"init timeout must be positive, got {options.timeout_seconds}")
    if options.heartbeat_timeout_seconds <= 0:
        raise DistributedError(
            f"heartbeat timeout must be positive, got {options.heartbeat_timeout_seconds}"
        )
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

    def join_explicit(**timeouts: int) -> None:
        jax.distributed.initialize(
            options.coordinator,
            num_processes=options.num_processes,
            process_id=options.process_id,
            **timeouts,
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
    and a thread (``join`` releases the GIL while it waits) reports first and exits. The same
    holds for a peer that dies later: JAX's heartbeat timeout is longer than the watchdog's.
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
        join(
            initialization_timeout=options.timeout_seconds + JAX_TIMEOUT_MARGIN_SECONDS,
            heartbeat_timeout_seconds=options.heartbeat_timeout_seconds
            + JAX_TIMEOUT_MARGIN_SECONDS,
        )
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
    if jax.process_count() > 1:
        PeerWatchdog(
            jax._src.distributed.global_state.client,  # the public API offers no handle
            jax.process_index(),
            jax.process_count(),
            options.heartbeat_timeout_seconds,
        ).start()


class PeerWatchdog:
    """Takes this process down, with one line naming the culprit, when a peer dies.

    Each process refreshes its own key in the coordination service's key-value store (on
    process 0) and reads everyone's; a peer whose key stays the same for the timeout while the
    store answers is dead or frozen. A store that stops answering means process 0 is. A dead
    host's peers would otherwise wait in their next collective (or, with gloo, in JAX's
    shutdown barrier after the collective fails) until JAX's heartbeat timeout aborts them.

    The first process to judge posts its verdict; the others adopt it at their next beat, so
    all name the same culprit. Process 0 leaves last: the store dies with it, and JAX aborts
    every process that loses the store before that process has said why.

    Not seen here: the death of process 0 with its connections closed by the OS (a crash, a
    SIGKILL). JAX's client then aborts every other process at once, before any Python runs.
    """

    def __init__(self, client, process_id: int, num_processes: int, timeout_seconds: int):
        self.client = client
        self.process_id = process_id
        self.num_processes = num_processes
        self.timeout_seconds = timeout_seconds
        self.interval = min(2.0, timeout_seconds / 10)  # ten beats within the timeout
        now = time.monotonic()
        self.last_answer = now  # the store's last answer
        self.last_change = {peer: now for peer in range(num_processes) if peer != process_id}
        self.beats: dict[int, str] = {}
        self.verdicts: dict[int, str] = {}  # process id -> whom it found silent
        self.stopped = threading.Event()

    def start(self) -> None:
        # Daemon threads: they must not keep a finished process alive. Two of them, because
        # an RPC to a frozen process 0 can block the beating one for minutes.
        threading.Thread(target=self._beat, name="peer-heartbeat", daemon=True).start()
        threading.Thread(target=self._watch, name="peer-watchdog", daemon=True).start()
        # Registered after JAX's own exit hook, so it runs before that one shuts the client.
        atexit.register(self.exit_together)

    def _beat(self) -> None:
        key = f"{HEARTBEAT_KEY_PREFIX}{self.process_id}"
        count = 0
        while not self.stopped.is_set():
            count += 1
            try:
                self.client.key_value_set(key, str(count), allow_overwrite=True)
                entries = self.client.key_value_dir_get(KEY_PREFIX)
            except Exception:  # jaxlib's XlaRuntimeError; _watch judges a store that stays away
                entries = None
            if entries is not None:
                self._record(entries, time.monotonic())
            self.stopped.wait(self.interval)

    def _record(self, entries: list[tuple[str, str]], now: float) -> None:
        self.last_answer = now
        for name, value in entries:
            kind, _, index = name.removeprefix(KEY_PREFIX).partition("/")
            peer = int(index)
            if kind == VERDICT_KEY:
                self.verdicts[peer] = value
            elif peer != self.process_id and self.beats.get(peer) != value:
                self.beats[peer] = value
                self.last_change[peer] = now

    def _watch(self) -> None:
        while not self.stopped.wait(self.interval):
            lost = self._judge()
            if lost:
                self._exit_lost(lost)

    def _judge(self) -> str | None:
        """Who is lost, in words, or None."""
        if self.verdicts:
            return next(iter(self.verdicts.values()))
        if time.monotonic() - self.last_answer > self.timeout_seconds:
            return f"process 0 of {self.num_processes} (the coordinator)"
        # Judged at the store's last answer: only a silence the store saw counts.
        silent = [peer for peer in self.last_change if self._silent(peer)]
        if not silent:
            return None
        plural = "es" if len(silent) > 1 else ""
        return f"process{plural} {', '.join(map(str, silent))} of {self.num_processes}"

    def _silent(self, peer: int) -> bool:
        return self.last_answer - self.last_change[peer] > self.timeout_seconds

    def _exit_lost(self, lost: str) -> None:
        # jaxlib's XlaRuntimeError when the store is gone: the others see that by themselves.
        with contextlib.suppress(Exception):
            self.client.key_value_set(f"{KEY_PREFIX}{VERDICT_KEY}/{self.process_id}", lost)
        if self.process_id == 0:
            # Until every live peer has posted its own verdict, i.e. is on its way out.
            deadline = time.monotonic() + self.timeout_seconds
            while time.monotonic() < deadline and any(
                peer not in self.verdicts and not self._silent(peer) for peer in self.last_change
            ):
                time.sleep(self.interval)
        _exit_now(
            f"{lost} stopped responding (no heartbeat for {self.timeout_seconds} s, "
            f"--heartbeat_timeout): process {self.process_id} exits too; rerun the command to "
            "resume from the last checkpoint"
        )

    def exit_together(self) -> None:
        """At exit, waits for every process to get here, still beating, then stops beating.

        Stopping at once would make a process that finishes early look dead to one still
        writing; beating on into JAX's shutdown would meet a store already shut down. A peer
        that dies meanwhile is reported by _watch as at any other time.
        """
        try:
            self.client.wait_at_barrier(EXIT_BARRIER, EXIT_BARRIER_TIMEOUT_SECONDS * 1000)
        except Exception as error:  # jaxlib's XlaRuntimeError
            # Alive but not finishing: JAX's own shutdown barrier would wait as long again.
            _exit_now(
                f"process {self.process_id} of {self.num_processes}: the others did not finish "
                f"within {EXIT_BARRIER_TIMEOUT_SECONDS} s ({str(error).splitlines()[0]})"
            )
        self.stopped.set()


def _exit_now(message: str) -> None:
    logger.error("%s", message)
    logging.shutdown()  # flush: os._exit skips every handler
    # os._exit, not sys.exit: the main thread may be inside an XLA collective or JAX's
    # shutdown barrier, C++ calls that no exception or signal handler can interrupt.
    os._exit(PEER_LOST_EXIT_CODE)


class PreemptionWatcher:
    """Says after which step to save and stop, once a preemption notice (SIGTERM) came.

    Call ``reached(step)`` after every step, on every host; a context manager.

    On a pod (``jax.process_count() > 1``) JAX's preemption service, started by
    ``jax.distributed.initialize``, owns SIGTERM: when any host gets one, the hosts agree
    on a step (the highest any has reached, plus one), and
    ``multihost_utils.reached_preemption_sync_point(step)`` is True on every host at that
    same step, so all of them enter the collective save together. That service only exists
    with a distributed runtime: in a single process (CPU, tests, a one-host TPU VM without
    ``jax.distributed``) the sync point is always False and nothing listens for SIGTERM, so
    here a Python handler sets a flag and the loop saves after the step in progress (with one
    process, "the same step on every host" holds trivially). Handlers are main-thread only:
    elsewhere a single process gets no preemption handling, with a warning.
    """

    def __init__(self):
        self._use_jax_service = jax.process_count() > 1
        self._notice = threading.Event()
        self._previous_handler: Any = None
        self._installed = False

    def __enter__(self) -> PreemptionWatcher:
        if self._use_jax_service:
            if not jax.config.jax_enable_preemption_service:
                logger.warning(
                    "jax_enable_preemption_service is off: a preempted pod will not checkpoint"
                )
        elif threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        else:
            logger.warning("training outside the main thread: SIGTERM will not checkpoint")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._installed = False

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if not self._notice.is_set():
            logger.warning("SIGTERM: saving a checkpoint after the current step, then stopping")
        self._notice.set()

    def reached(self, step: int) -> bool:
        if self._use_jax_service:
            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # the service is disabled
                return False
        return self._notice.is_set()


def sum_over_processes(values: np.ndarray) -> np.ndarray:
    """Element-wise sum of a host-local array over all processes, returned to every one.

    A collective: every process must call it, with the same shape. Float values travel as
    float32 (jax's default precision).
    """
    if jax.process_count() == 1:
        return values
    # [processes, ...] --> [...]
    return np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)
