"""virt-launcher of the `process` pod driver: one child process per running VM.

It stands for the VM's pod: the worker drives the domain, and this process's life is the pod's
life. It dies with the worker (PR_SET_PDEATHSIG), ends cleanly on SIGTERM, and if it dies any other
way the worker reports the launcher failed and the run strategy decides what comes next.
"""

from __future__ import annotations

import argparse
import ctypes
import signal
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m workers.launcher")
    parser.add_argument("--pod", required=True, help="the launcher's name, for ps and logs")
    args = parser.parse_args()
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: no orphans
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"launcher {args.pod} ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
