"""Supervisor for one local step process: `python -m jobs.launchers.runner STATE_DIR -- CMD...`.

The local launcher starts this runner, which detaches (so no Celery worker ever holds a zombie),
starts CMD in its own process group with stdout/stderr to STATE_DIR/output.log, records its pid
in STATE_DIR/process.json and, when it ends, its exit status in STATE_DIR/exit.json. The files are
written atomically, so a reader never sees half a record.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    state_dir = Path(argv[0])
    command = argv[argv.index("--") + 1 :]
    env_file = state_dir / "env.json"
    env = json.loads(env_file.read_text())
    if os.fork() > 0:  # the launcher waits for this parent only; the child lives on, re-parented
        return 0
    os.setsid()
    # Stops are sent to the step's process group, not to us; don't die with the launcher's terminal.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with open(state_dir / "output.log", "ab", buffering=0) as output, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            command, env=env, stdin=devnull, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
        write_json(state_dir / "process.json", {"pid": proc.pid, "pgid": proc.pid, "runner_pid": os.getpid(), "started": time.time()})
        code = proc.wait()
    write_json(state_dir / "exit.json", {"returncode": code, "ended": time.time()})
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
