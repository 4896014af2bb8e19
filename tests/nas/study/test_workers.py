"""Many search workers on one study: a journal file on one host, PostgreSQL across hosts.

The PostgreSQL tests start a real server in a temporary directory (initdb + pg_ctl from Debian's
postgresql package) and skip only where those binaries are absent.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import optuna
import pytest
from optuna.trial import TrialState

from nas.study.storage import fail_orphaned_trials, journal_storage

STUDY = "workers"


def _pg_binary(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is not installed (pip install slimnas[postgres])")
    # PostgreSQL refuses to run as root: run it as the postgres user in a directory it owns.
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="slimnas-pg-"))
    if os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "slimnas", "--no-sync"],
                   check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
                   check=True, capture_output=True)
    try:
        base = f"postgresql://slimnas@127.0.0.1:{port}"
        _create_database(base, "search")
        yield f"{base}/search"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _create_database(server_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")


def _worker(checkpoint: Path, storage: str, out: Path, trials: int, overrides: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "nas.search", "--checkpoint", str(checkpoint), "--budget", "3MFLOPs",
            "--trials", str(trials), "--storage", storage, "--study-name", STUDY, "--out", str(out), "--no-progress",
            *overrides, *extra]


def _check_shared_study(storage: optuna.storages.BaseStorage | str, trials: int, workers: int) -> list:
    study = optuna.load_study(study_name=STUDY, storage=storage)
    all_trials = study.get_trials(deepcopy=False)
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE]
    assert len(complete) == trials  # N in total, none lost
    assert not [t for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.number for t in all_trials}) == len(all_trials)  # no trial twice
    runners = {t.user_attrs["worker"]["pid"] for t in complete}
    # The study is shared: trials come from more than one process (a worker that starts after the others
    # have finished every trial may run none, so "all of them" would be a race, not a property).
    assert 2 <= len(runners) <= workers
    assert all("result" in t.user_attrs for t in complete)
    return all_trials


def _run_workers(commands: list[list[str]], cwd: Path) -> None:
    processes = [subprocess.Popen(c, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for c in commands]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-2000:]


def test_three_workers_share_a_journal_file(tiny_checkpoint: Path, search_overrides: list[str], tmp_path: Path) -> None:
    journal = tmp_path / "study.journal"
    _run_workers([_worker(tiny_checkpoint, str(journal), tmp_path / f"w{i}", 9, search_overrides) for i in range(3)],
                 cwd=tmp_path)
    _check_shared_study(journal_storage(journal), 9, 3)


def test_three_workers_share_a_postgres_study(postgres_url: str, tiny_checkpoint: Path, search_overrides: list[str],
                                              tmp_path: Path) -> None:
    _run_workers([_worker(tiny_checkpoint, postgres_url, tmp_path / f"w{i}", 9, search_overrides) for i in range(3)],
                 cwd=tmp_path)
    _check_shared_study(postgres_url, 9, 3)


def _kill_while_running(command: list[str], storage: optuna.storages.BaseStorage | str, cwd: Path) -> int:
    """Start a worker, SIGKILL it while it holds a RUNNING trial; return that trial's number."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            assert process.poll() is None, "the worker finished before it could be killed"
            try:
                running = optuna.load_study(study_name=STUDY, storage=storage).get_trials(
                    deepcopy=False, states=(TrialState.RUNNING,))
            except KeyError:  # the study does not exist yet
                running = []
            if running and "worker" in running[0].user_attrs:  # well inside the trial
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                return running[0].number
            time.sleep(0.02)
        raise AssertionError("no trial started in time")
    finally:
        if process.poll() is None:
            process.kill()


def test_killed_postgres_worker_is_failed_by_heartbeat(postgres_url: str, tiny_checkpoint: Path,
                                                       search_overrides: list[str], tmp_path: Path) -> None:
    server = postgres_url.rsplit("/", 1)[0]
    _create_database(server, "heartbeat")  # a study of its own
    url = f"{server}/heartbeat"
    quick = [*search_overrides, "storage.heartbeat_interval=1", "storage.grace_period=3"]
    for attempt in range(5):  # on an idle machine a tiny trial can finish between the poll and the kill: kill again
        killed = _kill_while_running(_worker(tiny_checkpoint, url, tmp_path / f"killed{attempt}", 6, quick), url,
                                     tmp_path)
        if optuna.load_study(study_name=STUDY, storage=url).get_trials(deepcopy=False)[killed].state == TrialState.RUNNING:
            break
    else:
        raise AssertionError("every kill landed after its trial had finished")
    _run_workers([_worker(tiny_checkpoint, url, tmp_path / f"w{i}", 6, quick) for i in range(2)], cwd=tmp_path)
    trials = optuna.load_study(study_name=STUDY, storage=url).get_trials(deepcopy=False)
    assert trials[killed].state == TrialState.FAIL  # failed by the survivors' heartbeat check
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6 and not [t for t in trials if t.state == TrialState.RUNNING]


def test_killed_journal_worker_is_failed_and_the_command_resumes(tiny_checkpoint: Path, search_overrides: list[str],
                                                                 tmp_path: Path) -> None:
    journal = tmp_path / "study.journal"
    command = _worker(tiny_checkpoint, str(journal), tmp_path / "run", 5, search_overrides)
    killed = _kill_while_running(command, journal_storage(journal), tmp_path)
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)  # the same command
    assert result.returncode == 0, result.stderr[-2000:]
    trials = optuna.load_study(study_name=STUDY, storage=journal_storage(journal)).get_trials(deepcopy=False)
    assert trials[killed].state == TrialState.FAIL
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 5
    assert fail_orphaned_trials(optuna.load_study(study_name=STUDY, storage=journal_storage(journal))) == []
