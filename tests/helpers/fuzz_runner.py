"""Running a fuzz case: a fresh directory holding the user's files (and, when the case asks, a
finished run with its teacher store and cache, perhaps damaged), the command, and the verdict:
exit 0 or 2 (2 with one line on stderr), no traceback, every file that was there before unchanged
unless kdistill made it and the command is one that may rewrite it.

Cases run in a persistent worker (``fuzz_worker.py``: kdistill imported once, address space
capped) or, for a sample, in the real console script under the same cap.
"""

from __future__ import annotations

import json
import os
import random
import resource
import select
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fuzz_cases import BUDGET, DECOYS, QUICK, RUN, TAMPERED, Case

SRC = Path(__file__).resolve().parents[2] / "src"
WORKER = Path(__file__).with_name("fuzz_worker.py")
KDISTILL = Path(sys.executable).with_name("kdistill")
MEMORY_CAP = 3 * 2**30  # address space of the child: torch's ~1.5 GB of mappings plus a run
CASE_TIMEOUT = 120  # seconds; a case is at most a few quick runs
# What kdistill made in the template: only these may change, and only under a command that
# rewrites a run (--overwrite, --resume, report, export) or builds a cache.
OWNED = (RUN + "/", "runs/.teachers/", "runs/.cache/")
REWRITES = {"--overwrite", "--resume", "report", "export", "cache"}


def child_env() -> dict:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE"
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH", "")]))
    return env


def cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


@dataclass
class Outcome:
    code: int
    stderr: str
    stdout: str = ""


class Worker:
    """One long-lived ``kdistill`` process; restarted after it dies, hangs, or has run many cases
    (so that nothing one case leaves behind in memory decides the next)."""

    def __init__(self, cases_per_process: int = 300):
        self.cases_per_process = cases_per_process
        self.process = None

    def start(self) -> None:
        read, write = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), str(write), str(MEMORY_CAP)],
            stdin=subprocess.PIPE,
            pass_fds=(write,),
            env=child_env(),
            text=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(write)
        self.replies = os.fdopen(read, "r")
        self.served = 0
        ready = self._reply(120)
        assert ready and "ready" in ready, "the fuzz worker did not start"

    def _reply(self, timeout: float) -> dict | None:
        readable, _, _ = select.select([self.replies], [], [], timeout)
        line = self.replies.readline() if readable else ""
        return json.loads(line) if line else None

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.replies.close()
            self.process = None

    def run(self, argv: list[str], cwd: Path, timeout: float = CASE_TIMEOUT) -> Outcome:
        if (
            self.process is None
            or self.process.poll() is not None
            or self.served >= self.cases_per_process
        ):
            self.stop()
            self.start()
        self.served += 1
        self.process.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd)}) + "\n")
        self.process.stdin.flush()
        reply = self._reply(timeout)
        if reply is None:
            status = self.process.poll()
            self.stop()
            why = (
                f"died with status {status}"
                if status is not None
                else f"still running after {timeout} s"
            )
            return Outcome(-1, f"the worker {why}")
        return Outcome(reply["code"], reply["stderr"], reply["stdout"])


def console_script(argv: list[str], cwd: Path, timeout: float = CASE_TIMEOUT) -> Outcome:
    try:
        done = subprocess.run(
            [str(KDISTILL), *argv],
            cwd=cwd,
            env=child_env(),
            capture_output=True,
            text=True,
            preexec_fn=cap_memory,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Outcome(-1, f"still running after {timeout} s")
    return Outcome(done.returncode, done.stderr, done.stdout)


# --- the directory of a case ----------------------------------------------------------------------


def build_template(root: Path, runner) -> Path:
    """A finished quick run with its teacher stored and cached, to copy into cases."""
    root.mkdir(parents=True, exist_ok=True)
    outcome = runner(["run", *QUICK, *BUDGET, "teacher.cache=true"], root)
    assert outcome.code == 0, outcome.stderr
    assert (root / RUN / "summary.json").is_file() and list(
        (root / "runs" / ".cache").glob("*/meta.json")
    )
    return root


def damage(file: Path, how: str, where: int) -> None:
    if how == "delete":
        file.unlink()
        return
    if how == "directory":
        file.unlink()
        (file / "inside").mkdir(parents=True)
        return
    data = file.read_bytes()
    at = where % max(len(data), 1)
    if how == "truncate":
        data = data[:at]
    elif how == "flip" and data:
        data = data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1 :]
    elif how == "garbage":  # seeded by the case, so hypothesis replays it exactly
        data = random.Random(where).randbytes(where % 300)
    elif how == "json_wrong":  # valid JSON of the wrong shape
        data = [b"[]", b"5", b"{}", b'"x"', b"null", b'{"format": 1}'][where % 6]
    elif how == "json_drop_key":
        try:
            tree = json.loads(data)
        except ValueError:
            tree = None
        if isinstance(tree, dict) and tree:
            del tree[sorted(tree)[where % len(tree)]]
            data = json.dumps(tree).encode()
    elif how == "architecture":  # a shared run naming code in place of a role's model
        tree = json.loads(data)
        role = ("student", "teacher")[where % 2]
        tree["roles"][role]["architecture"] = TAMPERED[where // 2 % len(TAMPERED)]
        data = json.dumps(tree).encode()
    elif how == "empty":
        data = b""
    elif how == "json_edit":  # a digit of the (JSON) header or text changed, the length kept
        head = data[: min(len(data), 4096)]
        digits = [i for i, byte in enumerate(head) if 0x30 <= byte <= 0x39]
        if digits:
            i = digits[where % len(digits)]
            data = data[:i] + (b"7" if data[i : i + 1] != b"7" else b"3") + data[i + 1 :]
    file.write_bytes(data)


def lay_out(case: Case, template: Path) -> Path:
    root = Path(tempfile.mkdtemp(prefix="case-", dir=template.parent))
    if case.template:
        shutil.copytree(template / "runs", root / "runs")
        if case.damage:
            pattern, how, where = case.damage
            found = sorted(root.glob(pattern))
            if found:
                damage(found[0], how, where)
    for relative, data in {**DECOYS, **case.files}.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    for relative, size in case.sparse.items():
        os.truncate(root / relative, size)  # a hole: gigabytes declared, nothing on disk
    return root


BIG = 2**26  # bytes: a larger file (a sparse one) is compared by size and time, not read


def contents(path: Path) -> bytes | tuple[int, int]:
    status = path.stat()
    return path.read_bytes() if status.st_size <= BIG else (status.st_size, status.st_mtime_ns)


def snapshot(root: Path) -> dict[str, bytes | tuple[int, int]]:
    files = (p for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink())
    return {p.relative_to(root).as_posix(): contents(p) for p in files}


def changed_files(before: dict, root: Path, argv: list[str]) -> list[str]:
    """The pre-existing files that changed or went, less those the command may rewrite."""
    rewrites = bool(REWRITES & set(argv))
    changed = []
    for relative, data in before.items():
        if rewrites and relative.startswith(OWNED):
            continue
        path = root / relative
        try:
            same = path.is_file() and contents(path) == data
        except OSError:
            same = False
        if not same:
            changed.append(relative)
    return changed


def verdict(case: Case, outcome: Outcome, changed: list[str]) -> str | None:
    """None when the case passed, else what went wrong."""
    if outcome.code not in (0, 2):
        return f"exit {outcome.code}: {outcome.stderr[-3000:]}"
    if "Traceback" in outcome.stderr:
        return f"traceback with exit {outcome.code}: {outcome.stderr[-3000:]}"
    if outcome.code == 2 and len(outcome.stderr.strip().splitlines()) != 1:
        return f"exit 2 with more than one line on stderr: {outcome.stderr[-1500:]}"
    if changed:
        return (
            f"pre-existing files changed: {changed[:5]} (exit {outcome.code}, "
            f"{outcome.stderr.strip()[-300:]})"
        )
    return None


def run_case(case: Case, template: Path, runner) -> tuple[Outcome, str | None]:
    root = lay_out(case, template)
    try:
        before = snapshot(root)
        outcome = runner(case.argv, root)
        return outcome, verdict(case, outcome, changed_files(before, root, case.argv))
    finally:
        shutil.rmtree(root, ignore_errors=True)
