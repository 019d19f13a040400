"""Fault injection for trainer tests, loaded only when a test puts this folder on PYTHONPATH.

With SHARDGAN_KILL_IN_WRITE=<restart> set, the torchrun worker of rank 0 in that restart
attempt SIGKILLs itself inside its first checkpoint write: the temp file is written, not yet
fsynced or renamed. It first touches SHARDGAN_KILL_MARKER so the test can see it happened.

With SHARDGAN_PAUSE_IN_WRITE="<restart>:<n> ..." set instead, rank 0 of each listed restart
attempt stops at the same point of its n-th checkpoint write, touches SHARDGAN_KILL_MARKER and
waits until the test (having SIGKILLed the rank of its choice) removes it, then goes on.
"""

import os
import signal
import time

_RESTART = os.environ.get("TORCHELASTIC_RESTART_COUNT")
_PAUSES = dict(item.split(":") for item in os.environ.get("SHARDGAN_PAUSE_IN_WRITE", "").split())


def _in_checkpoint_write(fd: int) -> bool:
    name = os.readlink(f"/proc/self/fd/{fd}")
    return ".pt." in name and name.endswith(".tmp")


if os.environ.get("RANK") == "0" and _RESTART == os.environ.get("SHARDGAN_KILL_IN_WRITE"):
    _fsync = os.fsync

    def _fsync_or_die(fd: int) -> None:
        if _in_checkpoint_write(fd):
            open(os.environ["SHARDGAN_KILL_MARKER"], "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        _fsync(fd)

    os.fsync = _fsync_or_die

elif os.environ.get("RANK") == "0" and _RESTART in _PAUSES:
    _fsync, _writes = os.fsync, [0]

    def _fsync_or_wait(fd: int) -> None:
        if _in_checkpoint_write(fd):
            _writes[0] += 1
            if _writes[0] == int(_PAUSES[_RESTART]):
                marker = os.environ["SHARDGAN_KILL_MARKER"]
                open(marker, "w").close()
                deadline = time.monotonic() + 120
                while os.path.exists(marker) and time.monotonic() < deadline:
                    time.sleep(0.005)
        _fsync(fd)

    os.fsync = _fsync_or_wait
