"""The state file of a running `datastorage run`: how the other commands find its servers.

While `run` is up with at least one embedded server, `<data_dir>/run.json` (mode 0600: it names
servers that trust whoever can reach them) holds the URLs it uses, its ports and its process id;
it is removed when `run` stops. Any other command started with the same `DATASTORAGE_DATA_DIR`
takes each URL it was not given from there. A file left by a run that was killed is recognised
by its process id (and that process's start time, so a reused pid does not fool it) and ignored.
"""

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "run.json"


@dataclass(frozen=True)
class RunState:
    pid: int
    # The process's start time in clock ticks since boot (/proc/<pid>/stat), None where unknown.
    started: int | None
    database_url: str
    redis_url: str
    http_port: int
    metrics_port: int
    audit_signing_key_file: str | None = None

    def alive(self) -> bool:
        """Whether the run that wrote this is still running."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # someone else's process: it exists
        return self.started is None or process_start_time(self.pid) == self.started


def process_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return int(stat.rsplit(")", 1)[1].split()[19])


def state_path(data_dir: Path) -> Path:
    return Path(data_dir) / STATE_FILE


def write_state(data_dir: Path, state: RunState) -> Path:
    """Writes the file atomically with mode 0600 (created so, never readable by others)."""
    path = state_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{STATE_FILE}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(asdict(state), file, indent=2)
    os.replace(temporary, path)
    return path


def this_process(**fields) -> RunState:
    return RunState(pid=os.getpid(), started=process_start_time(os.getpid()), **fields)


def read_state(data_dir: Path) -> RunState | None:
    """The state of the run on this data folder, if any (a broken file counts as none)."""
    try:
        return RunState(**json.loads(state_path(data_dir).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def remove_state(data_dir: Path, pid: int | None = None) -> None:
    """Removes the file (only if `pid` wrote it, when given)."""
    path = state_path(data_dir)
    if pid is not None:
        state = read_state(data_dir)
        if state is not None and state.pid != pid:
            return
    path.unlink(missing_ok=True)
