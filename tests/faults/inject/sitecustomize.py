"""Fault injection for trainer tests, loaded only when a test puts this folder on PYTHONPATH.

With SHARDGAN_KILL_IN_WRITE=<restart> set, the torchrun worker of rank 0 in that restart
attempt SIGKILLs itself inside its first checkpoint write: the temp file is written, not yet
fsynced or renamed. It first touches SHARDGAN_KILL_MARKER so the test can see it happened.
"""

import os
import signal

if os.environ.get("RANK") == "0" and os.environ.get("TORCHELASTIC_RESTART_COUNT") == os.environ.get("SHARDGAN_KILL_IN_WRITE"):
    _fsync = os.fsync

    def _fsync_or_die(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".pt." in name and name.endswith(".tmp"):
            open(os.environ["SHARDGAN_KILL_MARKER"], "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        _fsync(fd)

    os.fsync = _fsync_or_die
