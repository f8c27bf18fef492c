"""scripts/lib.sh: the process helpers scripts/stack/stack.sh and scripts/cluster/cluster.sh share.

Driven through bash on a real detached process (``sleep`` under a marked argv[0]): launch writes the pid
file, wait_ready waits for the check and fails naming the log when the process dies, running_pid accepts
only a process whose command line carries the mark, stop_one stops it and removes the pid file.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "scripts" / "lib.sh"


def bash(folder: Path, mark: str, script: str) -> subprocess.CompletedProcess[str]:
    prelude = f"""
set -euo pipefail
LOG_TAG=libtest PROC_DIR={folder} TIMEOUT=10
source {LIB}
logfile() {{ echo "$PROC_DIR/$1/$1.log"; }}
owns_pid() {{ tr '\\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q -- "{mark}=$2"; }}
"""
    return subprocess.run(["bash", "-c", prelude + script], capture_output=True, text=True, timeout=60)


def test_launch_wait_find_and_stop_a_server(tmp_path: Path) -> None:
    mark = f"libtest-{uuid.uuid4().hex[:8]}"
    started = bash(
        tmp_path,
        mark,
        f"""
launch srv bash -c 'echo ready; exec -a "{mark}=srv" sleep 60'
wait_ready srv "the test server" grep -q ready "$(logfile srv)"
running_pid srv
""",
    )
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.split()[-1])
    assert (tmp_path / "srv" / "pid").read_text().strip() == str(pid)
    try:
        assert bash(tmp_path, mark, "running_pid srv").stdout.strip() == str(pid)
        # Another mark (a pid file pointing at somebody else's process) is not ours: never signalled.
        assert bash(tmp_path, "someone-else", "running_pid srv").returncode == 1
        stopped = bash(tmp_path, mark, "stop_one srv; running_pid srv || echo gone")
        assert stopped.returncode == 0 and stopped.stdout.strip() == "gone", stopped.stderr
        assert "[libtest] stopped srv" in stopped.stderr
        assert not (tmp_path / "srv" / "pid").exists()
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    finally:
        subprocess.run(["kill", "-KILL", str(pid)], capture_output=True)


def test_wait_ready_names_the_log_when_the_server_dies_at_start(tmp_path: Path) -> None:
    failed = bash(
        tmp_path,
        "libtest-dies",
        """
launch dies bash -c 'echo "bad config: port taken"; exit 3'
wait_ready dies "the dying server" false
""",
    )
    assert failed.returncode == 1
    assert "[libtest] error: the dying server exited during start-up" in failed.stderr
    assert str(tmp_path / "dies" / "dies.log") in failed.stderr and "bad config: port taken" in failed.stderr


def test_both_scripts_source_the_helpers_and_define_none_of_them_again() -> None:
    shared = ("pidfile", "alive", "running_pid", "launch", "show_tail", "wait_ready", "stop_one", "log", "die")
    for script in ("scripts/stack/stack.sh", "scripts/cluster/cluster.sh"):
        text = (ROOT / script).read_text()
        assert 'source "$HERE/../lib.sh"' in text, script
        again = [name for name in shared if f"\n{name}() " in text]
        assert not again, f"{script} defines {again} again: they live in scripts/lib.sh"
