"""A persistent ``kdistill`` for the CLI fuzzer: imports kdistill once, then runs
``kdistill.cli.main(argv)`` for each case, as the console script would, so that thousands of
cases do not each pay the 2-3 s import of torch.

Protocol: one JSON request a line on stdin, ``{"argv": [...], "cwd": "..."}``; one JSON reply a
line on the file descriptor given as the first argument, ``{"code": int, "stdout": str,
"stderr": str}``. The console script's own descriptors 1 and 2 are pointed at /dev/null so that
nothing a case prints from C (a warning of a native library) can break the protocol; what Python
prints is captured per case. An exception escaping ``main`` is a bug: its traceback goes into
``stderr`` and the code is 1, exactly what the console script would show.

The second argument caps the address space (bytes) with ``setrlimit`` before anything is
imported: a case that tries to expand a bomb meets the cap, not the machine.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import sys
import traceback


def serve(reply_fd: int) -> None:
    from kdistill.cli import main

    replies = os.fdopen(reply_fd, "w", buffering=1)
    replies.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        out, err = io.StringIO(), io.StringIO()
        os.chdir(request["cwd"])
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(request["argv"])
            except SystemExit as stop:  # what the console script's sys.exit(main()) would give
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except BaseException:  # noqa: BLE001 - any escape is the bug this harness looks for
                traceback.print_exc()
                code = 1
        os.chdir("/")
        replies.write(
            json.dumps(
                {"code": code, "stdout": out.getvalue()[-4000:], "stderr": err.getvalue()[-8000:]}
            )
            + "\n"
        )


if __name__ == "__main__":
    reply_fd, cap = int(sys.argv[1]), int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    serve(reply_fd)
