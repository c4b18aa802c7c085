"""The contention guard: CPU used by other processes during a timing, and other costopt workers on the host."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from optimizer.measure import contention
from optimizer.measure.contention import Watch, other_workers, registered

SPIN = "import time\nt = time.time()\nwhile time.time() - t < {s}: pass\n"


def test_watch_sees_another_process_using_a_core():
    with Watch() as quiet:
        time.sleep(0.5)
    spinner = subprocess.Popen([sys.executable, "-c", SPIN.format(s=3.0)])
    try:
        time.sleep(0.5)  # let it start
        with Watch() as busy:
            time.sleep(1.0)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy.result.other_cores is not None and busy.result.other_cores > 0.6  # about one core
    assert busy.result.busy and busy.result.text.startswith("contended: other processes used")
    assert quiet.result.other_cores < busy.result.other_cores - 0.5


def test_a_window_too_short_to_resolve_is_not_judged():
    with Watch() as w:
        pass
    assert w.result.other_cores is None and not w.result.busy


def test_workers_see_each_other_and_a_dead_workers_mark_is_cleared(tmp_path, monkeypatch):
    monkeypatch.setattr(contention, "WORKERS_DIR", tmp_path / "workers")
    probe = f"from optimizer.measure import contention as c; from pathlib import Path; c.WORKERS_DIR = Path({str(tmp_path / 'workers')!r}); print(c.other_workers())"
    with registered():
        assert (tmp_path / "workers" / str(os.getpid())).is_file()
        seen = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
        assert str(os.getpid()) in seen  # another process sees this one as a worker
        assert other_workers() == []  # this one does not count itself
        with Watch() as w:
            time.sleep(0.2)
        assert not w.result.busy
    assert not (tmp_path / "workers" / str(os.getpid())).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "workers" / str(dead.pid)).write_text("0")
    assert other_workers() == [] and not (tmp_path / "workers" / str(dead.pid)).exists()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        (tmp_path / "workers" / str(other.pid)).write_text("0")
        with Watch() as w:
            time.sleep(0.2)
        assert w.result.workers == [other.pid] and w.result.busy and "1 other costopt worker" in w.result.text
    finally:
        other.kill()
        other.wait()
