"""One trainer per work dir: a second `otseg train` refuses naming the PID; a stale lock is taken over."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_layouts import make_voc

from conftest import tiny_train_args
from otseg.cli import main
from otseg.train.lock import LOCK_NAME, WorkDirBusyError, WorkDirLock

HOLDER = """
import sys, time
from otseg.train.lock import WorkDirLock
lock = WorkDirLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path: Path):
    """Another process that holds the lock of tmp_path / 'work'."""
    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(work)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield work, proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_second_lock_names_the_holder(holder) -> None:
    work, pid = holder
    with pytest.raises(WorkDirBusyError, match=rf"in use by another otseg train \(PID {pid}, lock file .*\.lock\)"):
        WorkDirLock(work).acquire()


def test_second_otseg_train_refuses_and_writes_nothing(holder, tmp_path: Path, capsys) -> None:
    work, pid = holder
    root = tmp_path / "data"
    make_voc(root)
    code = main(["train", *tiny_train_args("voc12-inductive", root, work, max_iters=2)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"PID {pid}" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in work.iterdir()) == [LOCK_NAME]


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path: Path) -> None:
    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(work)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    proc.kill()  # killed: the lock file stays behind with its PID
    proc.wait(timeout=30)
    assert (work / LOCK_NAME).read_text().split()[0] == str(proc.pid)
    with WorkDirLock(work) as lock:
        assert lock.took_over == proc.pid
        assert (work / LOCK_NAME).read_text().split()[0] != str(proc.pid)
    assert not (work / LOCK_NAME).exists()  # released on exit
    start = time.perf_counter()
    with WorkDirLock(work) as again:  # and free again
        assert again.took_over is None
    assert time.perf_counter() - start < 5


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_lock_released_while_another_takes_it_never_has_two_owners(tmp_path: Path, monkeypatch) -> None:
    """The race: B opens the lock file; A releases (unlinks, closes); C creates a new lock file and takes it; B's
    flock then succeeds on A's unlinked file. B must notice the file is no longer the one at the path, and find
    C there."""
    import fcntl

    from otseg.train import lock as lock_module

    work = tmp_path / "work"
    a = WorkDirLock(work).acquire()
    real_flock = fcntl.flock
    state: dict = {}

    def racing_flock(fd: int, op: int) -> None:
        if not state:  # B's first flock, on the file it opened before A let go
            state["c"] = None
            a.release()
            state["c"] = WorkDirLock(work).acquire()  # C: a new lock file at the path
        real_flock(fd, op)

    monkeypatch.setattr(lock_module.fcntl, "flock", racing_flock)
    with pytest.raises(WorkDirBusyError, match="in use by another otseg train"):
        WorkDirLock(work).acquire()  # B
    c = state["c"]
    assert c is not None and c._fd is not None and (work / LOCK_NAME).exists()
    c.release()
    assert not (work / LOCK_NAME).exists()


def test_a_link_planted_at_the_lock_file_is_not_followed(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (work / LOCK_NAME).symlink_to(victim)
    with pytest.raises(WorkDirBusyError, match="cannot open the lock file"):
        WorkDirLock(work).acquire()
    assert victim.read_text() == "precious"
