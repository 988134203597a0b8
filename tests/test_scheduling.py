"""How `make test` shares the suite among pytest-xdist workers (tests/conftest.py): a file's tests stay on one
worker (its module fixtures are made once), the heavy files listed in SPREAD_FILES go test by test, and the heavy
files go first. It relies on xdist's LoadScopeScheduling._split_scope; an xdist or pytest upgrade that changes how
work units are formed fails here, not as a silently slower suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TEST_FILE = """import os, time, pytest

@pytest.mark.parametrize("i", range(6))
def test_it(i):
    time.sleep(0.2)
    with open(os.path.join(os.path.dirname(__file__), "ran.txt"), "a") as f:
        f.write(f"{NAME} {os.environ['PYTEST_XDIST_WORKER']}\\n")
"""


def test_a_file_stays_on_one_worker_and_spread_files_go_test_by_test_first(tmp_path):
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    for name in ("test_alpha", "test_omega", "test_launch"):  # test_launch: a heavy file, spread and run first
        (tmp_path / f"{name}.py").write_text(f"NAME = {name!r}\n" + TEST_FILE)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider",
                           str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = [line.split() for line in (tmp_path / "ran.txt").read_text().splitlines()]
    assert len(ran) == 18
    workers = {name: {w for n, w in ran if n == name} for name in ("test_alpha", "test_omega", "test_launch")}
    assert len(workers["test_alpha"]) == len(workers["test_omega"]) == 1, workers
    assert workers["test_launch"] == {"gw0", "gw1"}, workers
    assert [n for n, _ in ran[:2]] == ["test_launch", "test_launch"], ran
