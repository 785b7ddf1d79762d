"""Cohort runs on Dask distributed: one pair per task, on a local cluster by default or on an existing one.

Why Dask distributed (not Ray, not a home-made pool): it is pure Python and small enough for a laptop install,
its ``LocalCluster`` gives worker *processes* with a memory limit each (a nanny restarts a worker that dies or
outgrows its limit), the scheduler reschedules the task of a dead worker on another one (up to
``distributed.scheduler.allowed-failures`` times, then the task fails with ``KilledWorker``), and the same code
runs unchanged against a cluster started elsewhere (``dask scheduler`` / ``dask worker``, dask-jobqueue on
SLURM/PBS, dask-kubernetes) by passing its address.

What the driver (this process) does: plan the run against the manifest (done pairs with unchanged inputs are
skipped), submit one :func:`~.task.register_pair` per remaining pair (the worker reads the files itself: only
paths travel through the scheduler), record every outcome in the manifest as it arrives, print the progress, and
write the report at the end. A pair that fails (bad input, or a worker that keeps dying on it) is recorded with
its error and never stops the others.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InputError, OutputError
from .manifest import Manifest
from .pairs import PairSpec
from .task import attempts, register_pair

__all__ = ["ClusterSpec", "local_cluster_spec", "open_client", "run_batch", "BatchSummary"]

GB = 1024**3


@dataclass
class ClusterSpec:
    """A local cluster's shape: ``workers`` processes, each registering one pair at a time with ``threads`` torch
    threads, ``memory_limit`` bytes each (the nanny restarts a worker above it)."""

    workers: int
    threads: int
    memory_limit: int
    gpus: int = 0

    def describe(self) -> str:
        gpus = f", one per GPU ({self.gpus})" if self.gpus else ""
        return (f"{self.workers} worker(s) x {self.threads} thread(s), "
                f"{self.memory_limit / GB:.1f} GB each{gpus}")


def _machine() -> tuple[int, int]:
    """(usable CPU cores, total memory in bytes) of this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil

        memory = int(psutil.virtual_memory().total)
    except ImportError:  # psutil comes with distributed; this is only for a stripped install
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return cores, memory


def local_cluster_spec(workers: int | None = None, threads: int | None = None, memory_limit_gb: float | None = None,
                       pair_memory_gb: float = 3.0) -> ClusterSpec:
    """The local cluster that fits this machine: one worker per GPU when there are GPUs; else one worker per core,
    but no more than the memory allows at ``pair_memory_gb`` per pair (a 3D deformable preset on a 256^3 pair
    stays under 3 GB), the cores shared out as torch threads (on 2 cores, 2 single-threaded workers registered
    3.57 pairs a minute against 2.68 for one worker of 2 threads: ``benchmarks/cohort.py``). Each worker's limit is
    its share of 90 % of the memory unless ``memory_limit_gb`` is given."""
    import torch

    cores, memory = _machine()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        workers = workers or gpus
    elif not workers:
        by_memory = int(memory * 0.9 // (pair_memory_gb * GB))
        workers = max(1, min(cores // (threads or 1), by_memory))
    threads = threads or max(1, cores // workers)
    if workers < 1 or threads < 1:
        raise InputError("workers and threads per worker must be at least 1")
    limit = int(memory_limit_gb * GB) if memory_limit_gb else int(memory * 0.9 / workers)
    return ClusterSpec(workers, threads, limit, gpus)


def open_client(scheduler: str | None = None, spec: ClusterSpec | None = None):
    """A Dask client: connected to ``scheduler`` (an address such as ``tcp://host:8786``) or to a new local cluster
    of ``spec`` (default :func:`local_cluster_spec`). Closing the client closes a local cluster too."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError("cohort runs need Dask distributed: pip install 'dask[distributed]' "
                         "(or pip install DeepRegistrationLib[cohort])") from None
    if scheduler:
        try:
            return Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise InputError(f"cannot reach the Dask scheduler at {scheduler}: {err}") from None
    spec = spec or local_cluster_spec()
    dashboard = ":0" if _has_bokeh() else None
    import dask

    # one task at a time per worker (its memory limit is sized for one pair); the task itself uses spec.threads.
    # Worker saturation 1.0: a worker holds only the pair it runs, so when a pair kills its worker (memory), no
    # pair queued behind it there is blamed for the death (Dask's default, 1.1, sends a second task ahead).
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        cluster = LocalCluster(n_workers=spec.workers, threads_per_worker=1, memory_limit=spec.memory_limit,
                               processes=True, dashboard_address=dashboard, silence_logs=logging.ERROR)
    client = Client(cluster)
    client._deepreg_local_cluster = cluster  # closed with the client (see close_client)
    return client


def close_client(client) -> None:
    cluster = getattr(client, "_deepreg_local_cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


@dataclass
class BatchSummary:
    """What a run did: counts by status over the run's pairs, the pairs skipped as already done, wall time, and
    where the manifest and report are."""

    done: int
    failed: int
    skipped: int
    wall_s: float
    manifest: Path
    report: Path | None
    failures: dict[str, str]


def _eta(start: float, finished: int, remaining: int) -> str:
    if not finished or not remaining:
        return "-"
    seconds = int((time.perf_counter() - start) / finished * remaining)
    return f"{seconds // 60}:{seconds % 60:02d}"


def run_batch(pairs: list[PairSpec], out_dir: str | os.PathLike, scheduler: str | None = None,
              cluster: ClusterSpec | None = None, device: str = "auto", retries: int = 1,
              progress: Callable[[str], None] | None = None, client=None, report: bool = True,
              threads: int | None = None) -> BatchSummary:
    """Register every pair of ``pairs`` on Dask, resumably (see the module's description).

    ``out_dir``: where ``manifest.json``, ``pairs/<id>/`` and the report go. ``scheduler``: an existing cluster's
    address (else a local cluster of ``cluster``, default :func:`local_cluster_spec`). ``client``: an open Dask
    client to use instead (left open). ``retries``: extra attempts of a task that raised an unexpected error (bad
    inputs are not retried; a dead worker's task is rescheduled by Dask itself). ``progress``: called with each
    progress line (default: print to stderr). Each pair uses ``threads`` torch threads, default ``cluster.threads``;
    on an existing cluster with neither, the worker's own setting (a Dask nanny sets ``OMP_NUM_THREADS=1``).
    """
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    out = Path(out_dir).resolve()
    if not pairs:
        raise InputError("no pairs to register")
    ids = [p.id for p in pairs]
    if len(set(ids)) != len(ids):
        raise InputError("pair ids must be unique")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{out}: cannot create the output folder ({err.strerror or err})") from None
    manifest = Manifest.load(out)
    todo: list[PairSpec] = []
    for spec in pairs:
        must, sums = manifest.plan(spec, out)
        if must:
            todo.append(spec)
            manifest.mark(spec, "pending", checksums=sums)
    skipped = len(pairs) - len(todo)
    manifest.meta.update(pairs=len(pairs), engine="dask.distributed", started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    manifest.save()
    say(f"{len(pairs)} pair(s): {skipped} already done (inputs unchanged), {len(todo)} to run")
    start = time.perf_counter()
    own_client = client is None and bool(todo)
    shape = cluster
    if own_client:
        shape = None if scheduler else (cluster or local_cluster_spec())
        client = open_client(scheduler, shape)
        say(f"Dask cluster: {shape.describe() if shape else scheduler}; dashboard: "
            f"{client.dashboard_link if _has_bokeh() or scheduler else 'none (pip install bokeh to get one)'}")
    try:
        if todo:
            _run(client, todo, out, manifest, device, retries, say, start, threads or (shape.threads if shape else None))
    finally:
        manifest.save()
        if own_client:
            close_client(client)
    counts = manifest.counts(ids)
    report_path = None
    if report:
        from .report import write_report

        report_path = write_report(manifest, out, ids)
    failures = {i: manifest.records[i].get("error", "") for i in ids if manifest.records[i]["status"] == "failed"}
    summary = BatchSummary(counts["done"], counts["failed"], skipped, time.perf_counter() - start, manifest.path,
                           report_path, failures)
    say(f"finished in {summary.wall_s:.1f} s: {summary.done} done ({skipped} from an earlier run), "
        f"{summary.failed} failed" + (f"; report {report_path}" if report_path else ""))
    return summary


def _run(client, todo: list[PairSpec], out: Path, manifest: Manifest, device: str, retries: int,
         say: Callable[[str], None], start: float, threads: int | None) -> None:
    from distributed import wait

    futures = {}
    for spec in todo:
        future = client.submit(register_pair, spec.to_dict(), str(out), device, threads, pure=False, retries=retries,
                               key=f"register-{spec.id}-{uuid.uuid4().hex[:8]}")
        futures[future] = spec
        manifest.mark(spec, "running")
    manifest.save()
    pending, finished, failed = set(futures), 0, 0
    try:
        while pending:
            try:
                done, pending = wait(pending, timeout=2, return_when="FIRST_COMPLETED")
            except TimeoutError:
                continue
            for future in done:
                spec = futures[future]
                record = _outcome(future, spec, out)
                manifest.mark(spec, record.pop("status"), **record)
                manifest.save()
                finished += 1
                failed += manifest.records[spec.id]["status"] == "failed"
                status = manifest.records[spec.id]["status"]
                detail = (f"{record['figures']['registration_s']:.1f} s"
                          + (f", Dice {record['figures']['dice']:.3f}" if "dice" in record["figures"] else "")
                          if status == "done" else record.get("error", ""))
                running = sum(len(v) for v in client.processing().values())
                say(f"[{finished}/{len(todo)}] {spec.id}: {status} ({detail}); {finished - failed} done, {failed} "
                    f"failed, {running} in flight, ETA {_eta(start, finished, len(todo) - finished)}")
    except KeyboardInterrupt:
        for future in pending:
            future.cancel()
        for future in pending:
            manifest.mark(futures[future], "pending")
        say("interrupted: finished pairs are in the manifest; run the same command again to resume")
        raise


def _outcome(future, spec: PairSpec, out: Path) -> dict:
    """The record fields of a finished future: the task's own answer, or its error."""
    n = attempts(out, spec.id)
    if future.status == "finished":
        return {**future.result(), "attempts": n}
    error = future.exception()
    name = type(error).__name__
    if name == "KilledWorker" and n:
        message = (f"the worker running it died {n} time(s) (crashed, or outgrew its memory limit); "
                   "it was not retried further")
    elif name == "KilledWorker":
        message = "the worker it waited on died several times (another pair crashed it); run the batch again"
    else:
        message = f"{name}: {error}"
    return {"status": "failed", "error": message, "attempts": n}
