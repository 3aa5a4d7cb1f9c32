r"""Running sweeps: many runs, on one core, on local processes or on a Dask cluster; resumable.

A sweep is a list of :class:`Task`\ s. A task is one training run (an
:class:`~kaf.experiments.config.ExperimentConfig`, plus the experiment's ``post`` step)
or one ``compute`` step of an experiment; either way it is a pure function of what it
holds, so it may run anywhere and in any order. :func:`run_sweep` executes the tasks

* one after another in this process (``jobs=1``, the default),
* on ``jobs`` local worker processes (:class:`concurrent.futures.ProcessPoolExecutor`;
  the workers are forks of a fork server that has imported torch and kaf, or spawned
  where there is no fork server; the sweep loads each data set once, while the fork
  server starts, and hands it to every worker), or
* on an existing Dask distributed cluster (``dask="tcp://host:8786"``: the scheduler
  decides which worker runs what; this module only submits and collects),

and assembles the tables in the order of the task list, never in the order the runs
finished, so every backend gives the same tables. Only the timing columns
(:data:`TIMING_COLUMNS`) differ between two executions of a run, as they do between two
serial runs.

Resuming: with an output folder, every finished task is written at once to
``<out>/runs/<experiment>/<digest>.pkl.gz`` (written to a temporary file and renamed, so a
kill never leaves a half-written record; a record damaged otherwise, say by a power cut,
fails gzip's check sum and is recomputed), where the digest is a hash of the task
(:func:`task_digest`). A later sweep reuses a record when its task digest and its code
digest (:data:`CODE_DIGEST`: a hash of the ``kaf`` sources that affect results and of the
versions of torch, numpy, pandas, scipy and scikit-learn) both match; ``fresh=True``
recomputes everything. Killing a sweep therefore loses at most the runs in flight.

Faults: a task that raises is reported with its traceback after the other tasks have
finished (their records are kept). A local worker process that dies (killed, out of
memory, a crash in native code) breaks its pool; the runs that were in flight are then run
again one at a time in a fresh pool, and a run whose worker dies :data:`CRASH_LIMIT` times
while running alone is reported as failed. On Dask, the scheduler reschedules a run whose
worker died and reports it as failed (``KilledWorker``) after
``distributed.scheduler.allowed-failures`` deaths. A sweep with a failed task raises
:class:`SweepError` and writes no table of that experiment: a row is never silently missing.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import datetime
import gzip
import hashlib
import json
import math
import multiprocessing
import os
import pickle
import re
import socket
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

import pandas as pd
import torch
from tqdm.auto import tqdm

from kaf.experiments.config import ExperimentConfig
from kaf.experiments.train import data_args, prepare, run

__all__ = ["Task", "SweepError", "SweepResult", "RunCache", "run_sweep", "run_many", "task_digest", "code_digest",
           "CODE_DIGEST", "TIMING_COLUMNS", "CRASH_LIMIT", "RUNS_FOLDER", "estimate_seconds", "write_table",
           "check_output_folder", "connect_dask", "atomic_write"]

#: columns that measure time and so differ between any two executions of the same run
TIMING_COLUMNS = ("epoch_time", "wall_time")
#: the run records live in ``<out>/RUNS_FOLDER/<experiment>/``
RUNS_FOLDER = "runs"
#: a local run whose worker process dies this many times while running alone is reported
CRASH_LIMIT = 2
#: seconds to wait for a Dask scheduler to answer
DASK_CONNECT_TIMEOUT = 5.0
_RECORD_FORMAT = 1
_SUFFIX = ".pkl.gz"
_TMP_NAME = re.compile(r"\..+\.\d+\.[0-9a-f]{8}\.tmp")

#: sources of kaf that cannot change a result (reading, plotting, judging tables; the command line).
#: This module is not one of them: execute() sets the number of threads, which changes rounding.
_RESULT_NEUTRAL = frozenset({
    "experiments/__main__.py", "experiments/plots.py", "experiments/verdicts.py", "experiments/analysis.py",
    "experiments/reading.py", "experiments/phrasing.py",
})
#: folders of the package whose files never change a result (the book's views)
_RESULT_NEUTRAL_DIRS = ("viz/",)


def code_digest() -> str:
    """Hash of the ``kaf`` sources that can change a result and of the numerical libraries' versions.

    Every ``*.py`` file of the package and the C++ source of the fused estimator kernel count
    except those in ``_RESULT_NEUTRAL`` (CLI, plots, verdicts, table reading,
    the interactive views in ``kaf/viz/``); a new module counts by default. So does the
    estimator's backend as asked for by ``KAF_NW_BACKEND`` (the fused kernel and the eager
    path agree to rounding, which a long training run can amplify).
    """
    from importlib.metadata import PackageNotFoundError, version

    import numpy

    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    package = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted([*package.rglob("*.py"), *package.rglob("*.cpp")]):
        rel = path.relative_to(package).as_posix()
        if rel in _RESULT_NEUTRAL or rel.startswith(_RESULT_NEUTRAL_DIRS):
            continue
        h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    versions = dict(python=f"{sys.version_info.major}.{sys.version_info.minor}", torch=torch.__version__,
                    numpy=numpy.__version__, pandas=pd.__version__, scipy=installed("scipy"),
                    sklearn=installed("scikit-learn"))
    versions["nw_backend"] = os.environ.get("KAF_NW_BACKEND", "auto")
    h.update(json.dumps(versions, sort_keys=True).encode())
    return h.hexdigest()[:16]


#: the code digest of the sources as they were when this process imported kaf (the code it runs)
CODE_DIGEST = code_digest()


def _qualname(fn) -> str | None:
    return None if fn is None else f"{fn.__module__}.{fn.__qualname__}"


@dataclass(frozen=True)
class Task:
    """One unit of work: a training run (``config``, then ``post`` on the trained model) or,
    with ``config=None``, an experiment's ``compute(scale)`` step.

    ``post(config, table, net, prepared)`` and ``compute(scale)`` return ``{extra: DataFrame}``;
    the run's tables are named ``experiment`` (the training table) and ``experiment_<extra>``.
    For the local and Dask backends the functions must be importable by the workers
    (module-level functions of an installed module).
    """

    experiment: str
    config: ExperimentConfig | None = None
    post: Callable | None = None
    compute: Callable | None = None
    scale: str | None = None

    def __post_init__(self):
        if (self.config is None) == (self.compute is None):
            raise ValueError(f"a Task needs exactly one of config and compute, got config={self.config!r}, "
                             f"compute={self.compute!r}")
        if self.config is not None and not isinstance(self.config, ExperimentConfig):
            raise ValueError(f"config must be an ExperimentConfig, got {type(self.config).__name__}")

    @property
    def digest(self) -> str:
        return task_digest(self)

    def label(self) -> str:
        if self.config is None:
            return f"{self.experiment}: compute {_qualname(self.compute)}({self.scale!r})"
        c = self.config
        changed = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)
                   if f.name != "name" and getattr(c, f.name) != f.default}
        return f"{self.experiment}: " + ", ".join(f"{k}={v!r}" for k, v in changed.items())


def task_digest(task: Task) -> str:
    """Hash (32 hex digits) of everything that defines the task's result besides the code."""
    if task.config is None:
        payload: dict = dict(experiment=task.experiment, compute=_qualname(task.compute), scale=task.scale)
    else:
        payload = dict(experiment=task.experiment, config=dataclasses.asdict(task.config), post=_qualname(task.post))
    text = json.dumps(payload, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class SweepError(RuntimeError):
    """Tasks failed (``failures``: ``[(task, reason)]``) or the sweep could not start."""

    def __init__(self, message: str, failures: list | None = None):
        super().__init__(message)
        self.failures = list(failures or [])


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns: the tables and how they were obtained."""

    tables: dict  # experiment -> {table name -> DataFrame}
    backend: str
    jobs: int | None
    computed: int = 0
    reused: int = 0
    run_seconds: dict = field(default_factory=dict)  # experiment -> seconds of its runs (where they ran)
    run_cpu_seconds: float = 0.0  # CPU time of all runs (unlike their wall time, not inflated by a busy machine)
    workers: int = 0  # distinct processes that computed runs
    wall: float = 0.0

    def provenance(self) -> dict:
        return dict(backend=self.backend, jobs=self.jobs,
                    runs=dict(total=self.computed + self.reused, computed=self.computed, reused=self.reused),
                    worker_processes=self.workers, run_cpu_time_s=round(self.run_cpu_seconds, 1))


# ----------------------------------------------------------------------------- executing one task

# one run at a time per process: run() seeds torch's global generator, so two runs in
# threads of one process (a Dask worker with --nthreads > 1) would draw from each other's seed
_RUN_LOCK = threading.Lock()
# data loaded by this worker process, reused by its later runs (a few entries: MNIST is large)
_PREPARED: collections.OrderedDict = collections.OrderedDict()
_PREPARED_MAX = 8
# data sets handed over by the sweep that started this local worker: {data key: kaf.data.Dataset}
_DATASETS: dict = {}


def _data_key(config: ExperimentConfig) -> tuple:
    return (config.dataset, config.data_seed, config.model, config.device, config.y_multiplier,
            config.target_transform, config.loss)


def _dataset_key(config: ExperimentConfig) -> tuple:
    return tuple(sorted(data_args(config).items()))


def _prepared(config: ExperimentConfig, cache):
    key = _data_key(config)
    if key in cache:
        if isinstance(cache, collections.OrderedDict):
            cache.move_to_end(key)
        return cache[key]
    prep = prepare(config, _DATASETS.get(_dataset_key(config)))
    cache[key] = prep
    if isinstance(cache, collections.OrderedDict) and len(cache) > _PREPARED_MAX:
        cache.popitem(last=False)
    return prep


def execute(task: Task, data_cache: dict | None = None) -> dict:
    """Run one task here; ``{"tables", "seconds", "cpu_seconds", "worker", "code"}`` (wall and CPU
    time of the task, ``host:pid`` of the process, :data:`CODE_DIGEST`). ``data_cache`` holds
    the loaded data between calls (default: this process's own cache)."""
    cache = _PREPARED if data_cache is None else data_cache
    # the whole task (data, training, post) on the config's threads: a reduction split over
    # another number of threads rounds differently, and the tables must not depend on the process
    threads = task.config.threads if task.config is not None else 1
    with _RUN_LOCK:
        old_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            if task.config is None:
                tables = {f"{task.experiment}_{k}": df for k, df in task.compute(task.scale).items()}  # type: ignore[misc]
            else:
                config = task.config
                table, net, prep = run(config, prepared=_prepared(config, cache), return_model=True)
                tables = {task.experiment: table}
                if task.post is not None:
                    for extra, df in task.post(config, table, net, prep).items():
                        tables[f"{task.experiment}_{extra}"] = df
            seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        finally:
            torch.set_num_threads(old_threads)
    return dict(tables=tables, seconds=seconds, cpu_seconds=cpu_seconds, worker=f"{socket.gethostname()}:{os.getpid()}",
                code=CODE_DIGEST)


# ----------------------------------------------------------------------------- files


def atomic_write(path: Path, write: Callable[[Path], object], durable: bool = True) -> None:
    """``write(tmp)`` then rename ``tmp`` over ``path``: readers see the old file or the whole new one.

    ``durable``: flush the file to the disk before the rename, so that even a power cut leaves the
    old file or the new one (a few milliseconds per file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # a new name in the same folder (the rename stays on one file system), created with the
    # permissions any file gets here (tempfile.mkstemp would make it private to this user)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")  # matches _TMP_NAME
    tmp.open("xb").close()
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    """Write ``df`` as gzip CSV (mtime 0: the same table gives the same bytes), atomically."""
    atomic_write(Path(path), lambda tmp: df.to_csv(tmp, index=False, compression={"method": "gzip", "mtime": 0}))


def table_rows(path: str | Path) -> int | None:
    """Rows of the table at ``path`` (``None`` when there is no readable table there)."""
    try:
        return len(pd.read_csv(path, usecols=[0]))
    except (OSError, ValueError, EOFError, pd.errors.ParserError):
        return None


def _losing_rows(path: Path, rows: int, most: bool = False) -> str | None:
    """Why writing a table of ``rows`` rows (``most``: at most) over ``path`` would lose results, or ``None``."""
    old = table_rows(path)
    if old is not None and old > rows:
        return f"{path} holds {old} rows and this sweep makes {'at most ' if most else ''}{rows}"
    return None


def _refuse_losing_rows(reasons: list) -> None:
    if reasons:
        raise SweepError("not overwritten, that would lose results: " + "; ".join(reasons)
                         + ". Choose another --out, or pass --fresh (fresh=True) to recompute and replace them")


def check_output_folder(out: str | Path) -> Path:
    """Create ``out`` (and its run-record folder) and prove that files can be written there.

    Raises :class:`SweepError` with the reason, before any run starts.
    """
    out = Path(out)
    try:
        (out / RUNS_FOLDER).mkdir(parents=True, exist_ok=True)
        for folder in (out, out / RUNS_FOLDER):
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise SweepError(f"the output folder {str(out)!r} cannot be written ({type(err).__name__}: {err}); "
                         f"choose another with --out") from err
    return out


class RunCache:
    """The run records of one output folder: ``<out>/runs/<experiment>/<task digest>.pkl.gz``.

    A record holds the run's tables (pickled DataFrames: exactly what the run returned), its
    code digest, the task it ran, where it ran and how long it took. Only this program
    writes them; do not load records from elsewhere (they are pickles).
    """

    def __init__(self, out: str | Path):
        self.folder = Path(out) / RUNS_FOLDER
        self._lock_file: IO[str] | None = None

    def path(self, task: Task) -> Path:
        return self.folder / task.experiment / f"{task.digest}{_SUFFIX}"

    def read(self, task: Task) -> dict | None:
        """The record of ``task`` (any code digest), or None when absent or unreadable."""
        path = self.path(task)
        try:
            with gzip.open(path, "rb") as fh:
                record = pickle.load(fh)
        except FileNotFoundError:
            return None
        except Exception as err:  # a damaged record is recomputed, never trusted
            warnings.warn(f"ignoring the unreadable run record {path} ({type(err).__name__}: {err}); "
                          f"it will be recomputed", RuntimeWarning, stacklevel=2)
            return None
        if not isinstance(record, dict) or record.get("format") != _RECORD_FORMAT or record.get("digest") != task.digest:
            return None
        return record

    def write(self, task: Task, outcome: dict) -> None:
        record = dict(format=_RECORD_FORMAT, digest=task.digest, experiment=task.experiment,
                      task=task.label(), finished_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(
                          timespec="seconds"), **outcome)

        def dump(tmp):
            with gzip.open(tmp, "wb", compresslevel=3) as fh:
                pickle.dump(record, fh, protocol=pickle.HIGHEST_PROTOCOL)

        # not flushed to the disk: a record is a cache that read() checks, and a flush per run
        # (milliseconds) is what a sweep of short runs would wait for
        atomic_write(self.path(task), dump, durable=False)

    def lock(self) -> None:
        """Hold this folder for one sweep at a time; remove temporary files left by a killed one."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # no advisory locks on this system: one sweep per folder is up to the user
            return
        fh = open(self.folder / ".lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            fh.close()
            raise SweepError(f"another sweep is writing into {str(self.folder.parent)!r}; wait for it to end "
                             f"or choose another --out") from err
        self._lock_file = fh
        # nobody else writes here now: a temporary file of atomic_write is a leftover of a killed sweep
        leftovers = list(self.folder.rglob(".*.tmp")) + list(self.folder.parent.glob(".*.tmp"))
        for tmp in leftovers:
            if _TMP_NAME.fullmatch(tmp.name):
                tmp.unlink(missing_ok=True)

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


# ----------------------------------------------------------------------------- order of work

#: rough (train rows, features, outputs, test rows) of each data set, for ordering only
_DATA_SIZES = {"iris": (105, 4, 3, 45), "wine": (124, 13, 3, 54), "house": (354, 13, 1, 152),
               "mnist": (3500, 784, 10, 1500)}
_CNN_MACS = 2.8e6  # multiply-adds per image of the FluidReLU CNN
_SECONDS_PER_MAC = 9.5e-11  # forward + backward, one CPU thread (measured on the committed runs)


def estimate_seconds(task: Task) -> float:
    """A rough duration of ``task`` on one CPU thread (only its order relative to others matters).

    Per epoch: a fixed cost per mini-batch, the multiply-adds of forward and backward over
    the training rows, and for K-AF the calc points' indices recomputed at every batch.
    """
    if task.config is None:
        return 0.5
    c = task.config
    n, d, k, n_test = _DATA_SIZES.get(c.dataset, (1000, 100, 2, 500))
    batches = math.ceil(n / c.batch_size)
    per_row = _CNN_MACS if c.model == "cnn" else d * c.hidden_size + c.hidden_size * k
    calc = (c.calc_size or n) if c.output == "kaf" else 0
    train = batches * (0.8e-3 if calc else 0.25e-3) + (n + batches * calc) * per_row * _SECONDS_PER_MAC
    evaluate = 2e-3 + (min(n, 1000) + n_test + 2 * calc) * per_row * _SECONDS_PER_MAC / 3
    return 0.02 + c.epochs * (train + evaluate)


# ----------------------------------------------------------------------------- backends


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process stays a zombie until its parent reaps it
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _watch_sweep(sweep_pid: int) -> None:
    # a worker whose sweep was killed has nothing left to report to: leave at once (its parent
    # may be the fork server, which waits for its workers before it exits itself)
    while _alive(sweep_pid):
        time.sleep(0.5)
    os._exit(1)


def _init_local_worker(sweep_pid: int, datasets: bytes) -> None:
    torch.set_num_threads(1)
    _DATASETS.update(pickle.loads(datasets))
    if os.name == "posix":
        threading.Thread(target=_watch_sweep, args=(sweep_pid,), daemon=True).start()


def _mp_context():
    """``forkserver`` where there is one (workers start as forks of a process that has already
    imported torch and kaf: a pool restarts in milliseconds), else ``spawn``; never a plain
    ``fork`` of this process, whose threads and state a worker must not inherit. The fork
    server is started here, so that it imports while this process goes on."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # torch._dynamo: the first optimizer imports it, which costs seconds in every new process;
        # kaf.data (scikit-learn, SciPy): a worker unpickling the sweep's data sets needs it
        ctx.set_forkserver_preload(["__main__", __name__, "torch._dynamo", "kaf.data"])
        from multiprocessing import forkserver

        forkserver.ensure_running()
        return ctx
    return multiprocessing.get_context("spawn")


def _load_datasets(todo) -> bytes:
    """Every data set the training runs of ``todo`` need, loaded once here (at the same time:
    a data set offline waits seconds for the network to fail), pickled for the workers.

    A worker that loaded its own would wait for the same network, parse the same files, and
    might even get other data than its neighbour if the network came or went meanwhile."""
    configs = {_dataset_key(t.config): t.config for t in todo if t.config is not None}
    if not configs:
        return pickle.dumps({})
    from kaf.data import load_dataset

    # one filter for all the threads (catch_warnings in each would restore each other's filters);
    # a fallback is recorded in the data's label, as load_data() does
    with warnings.catch_warnings(), cf.ThreadPoolExecutor(max_workers=len(configs)) as threads:
        warnings.simplefilter("ignore")
        loaded = dict(zip(configs, threads.map(lambda c: load_dataset(**data_args(c)), configs.values())))
    # plain pickle: tensors by value (ForkingPickler would put them in shared memory, which a
    # container may cap far below the size of MNIST)
    return pickle.dumps(loaded, protocol=pickle.HIGHEST_PROTOCOL)


class _LocalPool:
    def __init__(self, jobs: int, ctx, datasets: bytes):
        self.jobs, self._ctx, self._datasets = jobs, ctx, datasets
        self._pool = None

    def start(self):
        self._pool = cf.ProcessPoolExecutor(max_workers=self.jobs, mp_context=self._ctx,
                                            initializer=_init_local_worker, initargs=(os.getpid(), self._datasets))

    def submit(self, task):
        return self._pool.submit(execute, task)

    def close(self, broken=False):
        if self._pool is not None:
            self._pool.shutdown(wait=not broken, cancel_futures=True)
            self._pool = None


#: tasks in flight per local worker: one running and one waiting, so that a worker goes on at once
#: while this process records the run it has just finished
_DEPTH = 2


def _run_local(todo, jobs, handle, fail):
    """Fan ``todo`` out over ``jobs`` processes, at most ``_DEPTH * jobs`` tasks in flight; a
    worker's death loses those, and each is then rerun alone to find the one that killed it."""
    pending = collections.deque(todo)
    suspects: collections.deque = collections.deque()  # were in flight when a worker died: rerun alone
    crashes: collections.Counter = collections.Counter()
    inflight: dict = {}
    ctx = _mp_context()
    pool = _LocalPool(jobs, ctx, _load_datasets(todo))
    pool.start()

    def submit(task, queue) -> bool:
        try:
            inflight[pool.submit(task)] = task
            return True
        except BrokenProcessPool:
            if inflight:  # a worker died under a run: the wait below sees it; submit this one later
                queue.appendleft(task)
                return False
            # a worker died while idle (nothing was running): start a fresh pool
            pool.close(broken=True)
            pool.start()
            inflight[pool.submit(task)] = task
            return True

    def collect(fut, lost) -> None:
        """Take the outcome of a finished future: handled, failed, or (its pool broke) lost."""
        task = inflight.pop(fut)
        try:
            outcome = fut.result()
        except BrokenProcessPool:
            lost.append(task)
        except Exception as err:
            fail(task, err)
        else:
            handle(task, outcome)

    try:
        while pending or suspects or inflight:
            if suspects:
                if not inflight:
                    submit(suspects.popleft(), suspects)
            else:
                while pending and len(inflight) < _DEPTH * jobs and submit(pending.popleft(), pending):
                    pass
            alone = len(inflight) == 1
            done, _ = cf.wait(list(inflight), return_when=cf.FIRST_COMPLETED)
            lost = []
            for fut in done:
                collect(fut, lost)
            if not lost:
                continue
            # the pool is broken: every other task in flight is lost too (collect the ones that made it)
            for fut in list(inflight):
                collect(fut, lost)
            pool.close(broken=True)
            for task in lost:
                if alone:
                    crashes[task.digest] += 1
                if crashes[task.digest] >= CRASH_LIMIT:
                    fail(task, SweepError(f"its worker process died {crashes[task.digest]} times while running it "
                                          f"alone (killed, out of memory, or a crash in native code)"))
                else:
                    suspects.appendleft(task) if alone else suspects.append(task)
            pool.start()
    finally:
        pool.close(broken=True)


def check_dask_address(address) -> str:
    """``address`` if it reads as a Dask scheduler address (``tcp://HOST:PORT``, ``HOST:PORT``, ...),
    else :class:`ValueError` naming ``dask``; nothing is contacted."""
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"dask must be the address of a Dask scheduler, e.g. tcp://HOST:8786, got {address!r}")
    try:
        from distributed.comm import parse_address
        from distributed.comm.addressing import parse_host_port
    except ImportError:  # pragma: no cover - distributed is in requirements.txt
        raise ValueError("dask needs the `distributed` package (pip install distributed)") from None

    try:
        from distributed.comm.registry import backends

        scheme, location = parse_address(address if "://" in address else f"tcp://{address}")
        if scheme not in backends:
            raise ValueError(f"the protocol {scheme!r} is none of {sorted(backends)}")
        if scheme in ("tcp", "tls"):
            host, port = parse_host_port(location)
            if not host or not 0 < int(port) < 65536:
                raise ValueError(f"host {host!r}, port {port!r}")
    except (ValueError, TypeError) as err:
        raise ValueError(f"dask must be the address of a Dask scheduler, e.g. tcp://HOST:8786, got {address!r} "
                         f"({err})") from None
    return address


def connect_dask(address: str, timeout: float = DASK_CONNECT_TIMEOUT):
    """A :class:`distributed.Client` of the scheduler at ``address``; :class:`SweepError` within
    about ``timeout`` seconds when it cannot be reached or does not answer as a scheduler."""
    try:
        from distributed import Client
        from distributed.comm import parse_address
        from distributed.comm.addressing import parse_host_port
    except ImportError as err:  # pragma: no cover - distributed is in requirements.txt
        raise SweepError("--dask needs the `distributed` package (pip install distributed)") from err
    help_ = "start one with `dask scheduler` and give its address, e.g. tcp://HOST:8786"
    try:
        check_dask_address(address)
        scheme, location = parse_address(address if "://" in address else f"tcp://{address}")
        if scheme in ("tcp", "tls"):
            # refuse fast: a Client would retry a refused connection until its timeout
            host, port = parse_host_port(location)
            socket.create_connection((host, port), timeout=timeout).close()
    except (OSError, ValueError, TypeError) as err:
        raise SweepError(f"cannot reach a Dask scheduler at {address!r} ({type(err).__name__}: {err}); "
                         f"{help_}") from err
    # The Client's own timeout does not bound everything: a server that accepts and never
    # answers, or one that speaks another protocol (HTTP), can keep it waiting or reading a
    # nonsense frame length. So it is made in a thread, and given up on at the deadline.
    made: dict = {}

    def make():
        try:
            made["client"] = Client(address, timeout=timeout, set_as_default=False)
        except BaseException as err:  # reported below, in the caller's thread
            made["error"] = err

    maker = threading.Thread(target=make, daemon=True, name="kaf-dask-connect")
    maker.start()
    maker.join(timeout + 2.0)
    if maker.is_alive():
        # the client, if it is ever made, is closed by the thread that made it
        def close_when_made() -> None:
            maker.join()
            if made.get("client") is not None:
                made["client"].close()

        threading.Thread(target=close_when_made, daemon=True).start()
        raise SweepError(f"the server at {address!r} accepted the connection but did not answer as a Dask "
                         f"scheduler within {timeout:g} s; {help_}")
    if "error" in made:
        failure = made["error"]
        raise SweepError(f"the server at {address!r} did not answer as a Dask scheduler ({type(failure).__name__}: "
                         f"{str(failure)[:200]}); {help_}") from failure
    return made["client"]


def _run_dask(todo, address, handle, fail):
    from distributed import as_completed

    client = connect_dask(address)
    token = os.urandom(4).hex()
    futures = {}
    try:
        # the scheduler starts higher priorities first: the longest runs first
        for rank, task in enumerate(todo):
            fut = client.submit(execute, task, key=f"kaf-{task.experiment}-{task.digest[:12]}-{token}", pure=False,
                                priority=len(todo) - rank)
            futures[fut] = task
        for fut in as_completed(list(futures), loop=client.loop):
            task = futures.pop(fut)
            try:
                outcome = fut.result()
            except Exception as err:  # KilledWorker after repeated worker deaths, or the task's own error
                fail(task, err)
            else:
                handle(task, outcome)
            fut.release()
    finally:
        if futures:
            client.cancel(list(futures))
        client.close()


# ----------------------------------------------------------------------------- the sweep


def _assemble(tasks: list, outcomes: dict) -> dict:
    """Concatenate the tasks' tables in task order (tables in order of first appearance)."""
    parts: dict[str, list] = {}
    for task in tasks:
        for name, df in outcomes[task.digest]["tables"].items():
            parts.setdefault(name, []).append(df)
    return {name: pd.concat(dfs, ignore_index=True) for name, dfs in parts.items()}


def _check_same_data(tables: dict, seen: dict) -> None:
    """Every run of a data set must have run on the same data (workers may differ in what they can
    fetch); ``seen`` (data set -> labels) collects the labels across experiments."""
    for df in tables.values():
        if {"dataset", "data"} <= set(df.columns):
            for ds, labels in df.groupby("dataset")["data"].unique().items():
                seen.setdefault(ds, set()).update(labels)
    mixed = {ds: sorted(v) for ds, v in seen.items() if len(v) > 1}
    if mixed:
        raise SweepError(f"runs of the same data set ran on different data {mixed}: give every worker the same "
                         f"data (the same network access, or KAF_DATA_HOME pointing at one download)")


def run_sweep(experiments: dict, *, out: str | Path | None = None, jobs: int = 1, dask: str | None = None,
              fresh: bool = False, progress: bool = True, desc: str = "runs",
              on_experiment: Callable | None = None) -> SweepResult:
    """Run ``experiments`` (``{name: [Task, ...]}``) and return their tables in task order.

    Args:
        experiments: the tasks of each experiment; an experiment's tables are its tasks'
            tables concatenated in this order.
        out: output folder: each finished run is recorded in ``out/runs/`` and each experiment's
            tables are written to ``out/<table>.csv.gz`` as soon as its last run ends.
            ``None``: nothing is read or written.
        jobs: local worker processes (1: run here, one after another).
        dask: address of a Dask scheduler to submit the runs to instead.
        fresh: recompute runs that already have a record.
        progress: one tqdm bar over all runs.
        on_experiment: called as ``on_experiment(name, tables)`` when an experiment is complete.

    Raises:
        SweepError: a task failed (after every other task ended), the output folder cannot
            be written, or the Dask scheduler cannot be reached (both before any run).
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    if dask is not None and jobs != 1:
        raise ValueError(f"jobs and dask exclude each other (the cluster decides), got jobs={jobs!r}, dask={dask!r}")
    if dask is not None:
        check_dask_address(dask)
    start = time.perf_counter()
    backend = f"dask {dask}" if dask else ("processes" if jobs > 1 else "serial")
    cache = None
    if out is not None:
        out = check_output_folder(out)
        if not fresh:
            # a run writes one row per epoch (fewer if it diverges): a sweep that can only make a
            # smaller training table than the one in ``out`` is refused before it starts
            most: collections.Counter = collections.Counter()
            for tasks in experiments.values():
                for task in {t.digest: t for t in tasks if t.config is not None}.values():
                    most[task.experiment] += task.config.epochs
            _refuse_losing_rows([r for name, rows in most.items()
                                 if (r := _losing_rows(out / f"{name}.csv.gz", rows, most=True)) is not None])
        cache = RunCache(out)
        cache.lock()
    try:
        return _sweep(experiments, out, cache, jobs, dask, fresh, progress, desc, on_experiment, backend, start)
    finally:
        if cache is not None:
            cache.unlock()


def _sweep(experiments, out, cache, jobs, dask, fresh, progress, desc, on_experiment, backend, start):
    unique: dict[str, Task] = {}
    owners: dict[str, set] = collections.defaultdict(set)  # digest -> experiments needing it
    for name, tasks in experiments.items():
        for task in tasks:
            unique.setdefault(task.digest, task)
            owners[task.digest].add(name)
    if dask or jobs > 1:
        # the workers unpickle the tasks: find an unpicklable post/compute here, before any run
        for task in unique.values():
            try:
                pickle.dumps(task)
            except Exception as err:
                raise SweepError(f"{task.label()} cannot be sent to a worker ({type(err).__name__}: {err}): "
                                 f"post and compute must be module-level functions") from err
    outcomes: dict[str, dict] = {}
    estimates: dict[str, float] = {}
    reused = 0
    if cache is not None:
        for digest, task in unique.items():
            record = cache.read(task)
            if record is None:
                continue
            estimates[digest] = float(record.get("seconds", 0.0))
            if not fresh and record.get("code") == CODE_DIGEST:
                outcomes[digest] = record
                reused += 1
    todo = [t for d, t in unique.items() if d not in outcomes]
    # longest first, so that no long run is left alone at the end while the other workers idle
    todo.sort(key=lambda t: -estimates.get(t.digest, estimate_seconds(t)))

    result = SweepResult(tables={}, backend=backend, jobs=None if dask else jobs, reused=reused)
    failures: list = []
    remaining = {name: {t.digest for t in tasks} - set(outcomes) for name, tasks in experiments.items()}
    failed_experiments: set = set()
    workers: set = set()
    bar = tqdm(total=len(unique), initial=reused, desc=desc, unit="run", disable=not progress, smoothing=0.05)

    seen_data: dict = {}
    kept: list = []  # tables in ``out`` not overwritten: they hold more rows than the new ones

    def finish(name):
        tables = _assemble(experiments[name], outcomes)
        _check_same_data(tables, seen_data)
        result.tables[name] = tables
        if out is not None:
            for table_name, df in tables.items():
                if not fresh and (reason := _losing_rows(out / f"{table_name}.csv.gz", len(df))) is not None:
                    kept.append(reason)
                    continue
                try:
                    write_table(df, out / f"{table_name}.csv.gz")
                except OSError as err:  # a full disk, a folder removed under the sweep
                    raise SweepError(f"cannot write the table {table_name!r} into {str(out)!r} "
                                     f"({type(err).__name__}: {err})") from err
        if on_experiment is not None:
            on_experiment(name, tables)

    def handle(task, outcome):
        if outcome["code"] != CODE_DIGEST:
            raise SweepError(f"worker {outcome['worker']} runs other kaf sources (code digest {outcome['code']}, "
                             f"here {CODE_DIGEST}): install the same kaf and library versions on every worker")
        outcome = dict(outcome)
        if cache is not None:
            try:
                cache.write(task, outcome)
            except OSError as err:
                raise SweepError(f"cannot record a finished run in {str(cache.folder)!r} ({type(err).__name__}: "
                                 f"{err}); the runs recorded before it are kept") from err
        outcomes[task.digest] = outcome
        workers.add(outcome["worker"])
        result.computed += 1
        bar.update(1)
        for name in sorted(owners[task.digest]):
            remaining[name].discard(task.digest)
            if not remaining[name] and name not in failed_experiments:
                finish(name)

    def fail(task, err):
        failures.append((task, err))
        failed_experiments.update(owners[task.digest])
        bar.update(1)
        bar.set_postfix(failed=len(failures))

    try:
        for name in experiments:
            if not remaining[name]:
                finish(name)
        if not todo:
            pass
        elif dask:
            _run_dask(todo, dask, handle, fail)
        elif jobs > 1:
            _run_local(todo, jobs, handle, fail)
        else:
            data_cache: dict = {}
            for task in todo:
                try:
                    outcome = execute(task, data_cache)
                except Exception as err:
                    fail(task, err)
                else:
                    handle(task, outcome)
    finally:
        bar.close()
    result.workers = len(workers)
    result.wall = time.perf_counter() - start
    for name, tasks in experiments.items():
        result.run_seconds[name] = sum(outcomes[t.digest]["seconds"] for t in tasks if t.digest in outcomes)
    result.run_cpu_seconds = sum(o.get("cpu_seconds", math.nan) for o in outcomes.values())
    if failures:
        lines = [f"  {task.label()}\n    {type(err).__name__}: {err}" for task, err in failures]
        kept_runs = f"; the {len(outcomes)} finished runs are kept in {cache.folder}" if cache is not None else ""
        raise SweepError(f"{len(failures)} of {len(unique)} runs failed (no table written for "
                         f"{sorted(failed_experiments)}{kept_runs}):\n" + "\n".join(lines), failures) from failures[0][1]
    _refuse_losing_rows(kept)
    return result


def run_many(configs, *, progress: bool = True, desc: str = "runs", jobs: int = 1, dask: str | None = None) -> pd.DataFrame:
    """Run a list of configs (a sweep) and concatenate their tables in list order; one tqdm bar over runs.

    ``jobs`` > 1 fans the runs out over that many local processes, ``dask`` submits them to
    the Dask scheduler at that address (see :func:`run_sweep`); the table is the same either
    way (only the timing columns differ between executions). Data are loaded once per
    distinct (dataset, data_seed, model, device, y_multiplier, target_transform, loss) in
    each process.
    """
    # one table name for every run, whatever their config names: the rows stay in list order
    tasks = [Task("runs", config=c) for c in configs]
    result = run_sweep({"runs": tasks}, jobs=jobs, dask=dask, progress=progress, desc=desc)
    return result.tables["runs"].get("runs", pd.DataFrame())
