"""Processes of the local services: free ports on 127.0.0.1, waiting for health, stopping a process group."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"
GRPC_OFFSET = 10000  # SeaweedFS serves gRPC on http port + 10000


class ServiceError(RuntimeError):
    pass


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(with_grpc: bool = False, taken: set | None = None) -> int:
    """A free port on 127.0.0.1 (and port + 10000 free as well when with_grpc)."""
    taken = taken if taken is not None else set()
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port in taken or port + GRPC_OFFSET > 65535:
            continue
        if with_grpc and (port + GRPC_OFFSET in taken or not port_free(port + GRPC_OFFSET)):
            continue
        taken.update({port, port + GRPC_OFFSET} if with_grpc else {port})
        return port
    raise ServiceError("no free port pair found on 127.0.0.1")


def local_urlopen(request, timeout: float):
    """urllib's urlopen for a server on 127.0.0.1, never through a proxy: urllib sends even 127.0.0.1 to an
    http_proxy from the environment, and the request may carry a login."""
    import urllib.request

    return urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=timeout)


def wait_until(check, what: str, timeout: float, proc: subprocess.Popen | None = None, log: str | None = None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = Path(log).read_text()[-2000:] if log and Path(log).exists() else ""
            raise ServiceError(f"{what} exited with code {proc.returncode} while starting:\n{tail}")
        try:
            if check():
                return
        except Exception as err:  # not up yet
            last = err
        time.sleep(0.3)
    raise ServiceError(f"{what} did not become healthy within {timeout:.0f} s (last error: {last})")


def stop_pid(pid: int, grace: float = 10.0) -> bool:
    """SIGTERM the process group, wait, then SIGKILL. True if something was running."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished:
                return True
        except ChildProcessError:  # not our child: poll for existence instead
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


