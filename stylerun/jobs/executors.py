"""Where batch jobs run: local worker processes, or the actors of a Ray cluster.

Both executors take the same `worker.Task` and give back the same `worker.TaskResult`, so
the batch driver (`jobs/batch.py`) and its manifest do not know which one ran a job. The
driver hands an executor at most `slots` tasks at a time, so nothing waits in a queue
that a Ctrl-C would have to drain, and `request_stop` makes the running jobs stop at
their next evaluation and write their checkpoints.

`LocalExecutor` runs tasks in spawned processes that share the driver's filesystem;
each process keeps its loss sessions across jobs. `RayExecutor` runs one actor per slot,
each holding its own session cache; inputs travel through Ray's object store (each
file put once), and outputs and checkpoints come back as bytes for the driver to write,
so workers need no shared filesystem. Ray is imported only when a `RayExecutor` starts.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from stylerun.errors import StylerunError
from stylerun.jobs.worker import Shipped, Task, TaskResult, Watch, failed, perform
from stylerun.network.sessions import ModelCache, default_threads

#: Thread pools of the numerical libraries in each local worker: as many threads as the job's,
#: not one per core. Otherwise OpenBLAS (L-BFGS-B's vector steps) starts a thread per core in
#: every worker and they spin against each other (measured: docs/performance.md). Ray sets
#: OMP_NUM_THREADS for its actors in the same way.
BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: `--ray` without an address: start a Ray instance inside this run.
LOCAL = "local"
RAY_HINT = "pip install 'stylerun[ray]'"
_ADDRESS = re.compile(r"^(local|auto|ray://\S+|[\w.\-]+:\d+)$")


def sizing(jobs: int, cores: int, workers: int | None = None, threads: int | None = None) -> tuple[int, int]:
    """(workers, threads per job): by default as many single-threaded workers as there are
    jobs and cores, and the cores left over shared out as threads, so workers x threads <= cores:
    single-threaded workers side by side finish a batch sooner than fewer wider ones
    (measured: docs/performance.md).
    """
    cores = max(1, cores)
    if workers is None:
        workers = max(1, min(jobs, cores // (threads or 1)))
    if threads is None:
        threads = max(1, cores // workers)
    return workers, threads


def is_ray_address(text: str) -> bool:
    return bool(_ADDRESS.match(text))


# --- local processes -------------------------------------------------------------------------------

_STOP: Any = None
_MODELS: ModelCache | None = None


def _start_process(stop: Any) -> None:
    """In each worker process: Ctrl-C is the driver's to handle (it asks the jobs to stop through
    `stop`), and loss sessions are kept across jobs."""
    global _STOP, _MODELS
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _STOP, _MODELS = stop, ModelCache()


def _perform_here(task: Task) -> TaskResult:
    return perform(task, _STOP.is_set, _MODELS)


class LocalExecutor:
    """`workers` spawned processes on this machine; each job's files land in the batch folder directly."""

    ships = False

    def __init__(self, workers: int, threads: int):
        self.slots, self.threads = workers, threads
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.tasks: dict[concurrent.futures.Future, tuple[Task, Any]] = {}
        self.set_env: list[str] = []

    def describe(self) -> str:
        return f"{self.slots} local worker process{'es' if self.slots > 1 else ''} x {self.threads} thread" + \
            ("s" if self.threads > 1 else "")

    def start(self) -> None:
        # spawned processes take the environment as it is when they start; a value the user set wins
        if not self.set_env:  # (a restart after a broken pool finds ours in place)
            self.set_env = [name for name in BLAS_THREADS if name not in os.environ]
            os.environ.update({name: str(self.threads) for name in self.set_env})
        context = multiprocessing.get_context("spawn")  # no forked copies of onnxruntime's threads
        self.stop_event = context.Event()
        self.pool = concurrent.futures.ProcessPoolExecutor(self.slots, mp_context=context,
                                                           initializer=_start_process, initargs=(self.stop_event,))

    def submit(self, task: Task) -> concurrent.futures.Future:
        future = self.pool.submit(_perform_here, task)
        self.tasks[future] = (task, self.pool)
        return future

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, TaskResult]]:
        done, _ = concurrent.futures.wait(handles, timeout, return_when=concurrent.futures.FIRST_COMPLETED)
        return [(future, self._result(future)) for future in done]

    def _result(self, future: concurrent.futures.Future) -> TaskResult:
        task, pool = self.tasks.pop(future)
        try:
            return future.result()
        except concurrent.futures.process.BrokenProcessPool:
            if pool is self.pool and not self.stop_event.is_set():  # the jobs not yet sent get a fresh pool
                pool.shutdown(wait=False)
                self.start()
            return failed(task.id, "a worker process died while this job ran (killed, or out of memory)")
        except Exception as exc:  # the result could not come back (e.g. it could not be pickled)
            return failed(task.id, f"the worker could not return this job's result: {type(exc).__name__}: {exc}")

    def request_stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        for name in self.set_env:
            os.environ.pop(name, None)
        self.set_env = []


# --- Ray -------------------------------------------------------------------------------------------


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise StylerunError(f"--ray needs Ray, which is not installed: {RAY_HINT}") from None
    return ray


class RayWorker:
    """The actor: one per slot, keeping its loss sessions across the jobs it runs.

    It runs with two threads so that `stop` and `progress` are served while `perform` runs.
    """

    def __init__(self) -> None:
        self.stopping = threading.Event()  # every job, for good: the batch is ending
        self.stopped: set[str] = set()  # single jobs (a served job cancelled); the actor goes on
        self.models = ModelCache()
        self.watch: Watch | None = None

    def perform(self, task: Task, watch: bool = False) -> TaskResult:
        """Run `task`; with `watch`, `progress` reports on it while it runs."""
        items = (task.content, *task.style)
        refs = [item.data for item in items if not isinstance(item.data, bytes)]  # Ray object refs
        if refs:
            data = iter(import_ray().get(refs))
            items = tuple(item if isinstance(item.data, bytes) else Shipped(item.name, next(data)) for item in items)
        self.watch = Watch() if watch else None
        try:
            return perform(replace(task, content=items[0], style=items[1:]),
                           lambda: self.stopping.is_set() or task.id in self.stopped, self.models, self.watch)
        finally:
            self.stopped.discard(task.id)

    def progress(self) -> dict[str, Any] | None:
        """What is new in the watched job (`Watch.take`), or None if the job is not watched."""
        watch = self.watch
        return None if watch is None else watch.take()

    def stop(self, task_id: str | None = None) -> None:
        """Stop the job `task_id` at its next evaluation; with no id, every job from now on."""
        if task_id is None:
            self.stopping.set()
        else:
            self.stopped.add(task_id)

    def stats(self) -> tuple[int, int]:
        """(sessions created, sessions reused)."""
        return self.models.created, self.models.reused


class RayExecutor:
    """Tasks on Ray actors: an instance started here (`address` "local") or a cluster ("auto", "ray://...")."""

    ships = True

    def __init__(self, address: str, jobs: int, workers: int | None, threads: int | None, gpus: float = 0.0):
        if not is_ray_address(address):
            raise StylerunError(f"--ray takes auto, ray://HOST:PORT or HOST:PORT (or nothing: a Ray instance started "
                                f"here), got '{address}'")
        self.ray = import_ray()
        self.address, self.jobs, self.asked, self.gpus = address, jobs, (workers, threads), gpus
        self.slots, self.threads = sizing(jobs, default_threads(), workers, threads)
        self.free: list[Any] = []
        self.busy: dict[Any, tuple[Task, Any]] = {}
        self.puts: dict[str, Any] = {}
        self.startup_s = 0.0
        self.lock = threading.Lock()  # the slots, for callers on several threads (`follow`)

    def describe(self) -> str:
        where = "a local Ray instance" if self.address == LOCAL else f"Ray at {self.address}"
        gpus = f", {self.gpus:g} GPU each" if self.gpus else ""
        return f"{self.slots} Ray actor{'s' if self.slots > 1 else ''} x {self.threads} thread" + \
            ("s" if self.threads > 1 else "") + f"{gpus} on {where} (started in {self.startup_s:.1f} s)"

    def start(self) -> None:
        begin = time.perf_counter()
        self.check_reachable()
        try:
            self.connect()
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError, ... by situation
            hint = ""
            if self.address != LOCAL and "RAY_AUTH_MODE" not in os.environ:
                hint = " (a cluster started with token authentication, ray start's default, needs RAY_AUTH_MODE=token)"
            raise StylerunError(f"cannot start or reach Ray ({LOCAL if self.address == LOCAL else self.address}): "
                                f"{' '.join(str(exc).split())}{hint}") from None
        actor = self.ray.remote(num_cpus=self.threads, num_gpus=self.gpus, max_concurrency=2)(RayWorker)
        self.free = [actor.remote() for _ in range(self.slots)]
        self.actor_class = actor
        self.startup_s = time.perf_counter() - begin

    def check_reachable(self, timeout: float = 5.0) -> None:
        """A HOST:PORT that nothing answers on is refused here: Ray itself would retry for minutes."""
        host, _, port = self.address.removeprefix("ray://").rpartition(":")
        if not port.isdigit():  # local, auto
            return
        try:
            socket.create_connection((host, int(port)), timeout).close()
        except OSError as exc:
            raise StylerunError(f"cannot reach Ray at {self.address}: {exc.strerror or exc} "
                                f"(is the cluster started? ray start --head)") from None

    def connect(self) -> None:
        ray, (workers, threads) = self.ray, self.asked
        quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
        if self.address == LOCAL:
            ray.init(address="local", num_cpus=self.slots * self.threads, num_gpus=None if self.gpus else 0,
                     include_dashboard=False, **quiet)
            return
        ray.init(address=self.address, **quiet)
        resources = ray.cluster_resources()
        self.slots, self.threads = sizing(self.jobs, int(resources.get("CPU", 1)), workers, threads)
        if self.gpus and workers is None:
            self.slots = max(1, min(self.slots, int(resources.get("GPU", 0) // self.gpus)))

    def ship(self, task: Task, share: bool = True) -> Task:
        """The task with its input files in the object store and nothing left to the filesystem.

        With `share` each file is put once for the batch's many jobs; without, the bytes
        travel with this task alone and are freed with it (a server's uploads are used once).
        """
        def put(path: Any) -> Shipped:
            key = str(path)
            if not share:
                return Shipped(key, Path(path).read_bytes())
            if key not in self.puts:
                self.puts[key] = self.ray.put(Path(path).read_bytes())
            return Shipped(key, self.puts[key])

        resume = Path(task.resume).read_bytes() if isinstance(task.resume, str) else task.resume
        return replace(task, content=put(task.content), style=tuple(put(s) for s in task.style), outdir=None,
                       resume=resume)

    def submit(self, task: Task, watch: bool = False, share: bool = True) -> Any:
        with self.lock:
            actor = self.free.pop()
            ref = actor.perform.remote(self.ship(task, share), watch)
            self.busy[ref] = (task, actor)
        return ref

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, TaskResult]]:
        ready, _ = self.ray.wait(list(handles), num_returns=1, timeout=timeout)
        return [(ref, self._result(ref)) for ref in ready]

    def _result(self, ref: Any) -> TaskResult:
        with self.lock:
            task, actor = self.busy.pop(ref)
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:  # the actor died (node lost, out of memory): replace it
            actor = self.actor_class.remote()
            result = failed(task.id, f"the Ray worker failed while this job ran: {' '.join(str(exc).split())[:300]}")
        with self.lock:
            self.free.append(actor)
        return result

    def follow(self, task: Task, report: Callable[[dict[str, Any]], None], stop: Callable[[], bool],
               every: float = 0.5) -> TaskResult:
        """Run one task on a free actor, handing what is new in it (`Watch.take`) to `report` about
        every `every` seconds and once at the end; once `stop()` is true the actor is asked to stop
        the task, which then ends ``interrupted`` with its checkpoint and picture in the result.

        For callers that each run one task at a time, on as many threads as there are slots (the
        server's workers); a batch uses `submit` and `wait` instead.
        """
        ref = self.submit(task, watch=True, share=False)
        with self.lock:
            actor = self.busy[ref][1]
        asked = False
        while not self.ray.wait([ref], timeout=every)[0]:
            if not asked and stop():
                actor.stop.remote(task.id)
                asked = True
            self._report(actor, report)
        self._report(actor, report)  # the last iterations' numbers and preview
        return self._result(ref)

    def _report(self, actor: Any, report: Callable[[dict[str, Any]], None]) -> None:
        try:
            taken = self.ray.get(actor.progress.remote(), timeout=60)
        except self.ray.exceptions.RayError:  # the actor is gone: its task's result says so
            return
        if taken is not None:
            report(taken)

    def request_stop(self) -> None:
        for _, actor in self.busy.values():
            actor.stop.remote()

    def close(self) -> None:
        if self.ray.is_initialized():
            self.ray.shutdown()


def make_executor(ray: str | None, jobs: int, workers: int | None, threads: int | None, gpus: float = 0.0):
    """The executor the command line asks for; nothing starts until its `start`."""
    if ray is not None:
        return RayExecutor(ray, jobs, workers, threads, gpus)
    if gpus:
        raise StylerunError("--gpus-per-job is for --ray; a local batch uses the device option")
    return LocalExecutor(*sizing(jobs, default_threads(), workers, threads))
