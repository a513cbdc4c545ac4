"""Real git servers for the git backend tests: ``git daemon``, ``git http-backend``, bare repos.

One session-wide directory of bare repositories is served by one ``git daemon
--enable=receive-pack`` and one HTTP bridge in front of ``git http-backend``, both on
127.0.0.1 and free ports. Tests that stop or pause a server start their own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import free_port, freeze, need_binary, running

BRIDGE = Path(__file__).with_name("http_bridge.py")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@localhost",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@localhost",
}


def git(repo: Path, *args: str, input: bytes | None = None) -> str:
    """Run the git CLI on a server-side repository (the tests' independent view)."""
    out = subprocess.run(
        ["git", "-C", str(repo), *args],
        input=input,
        capture_output=True,
        check=True,
        env={**os.environ, **GIT_ENV},
    )
    return out.stdout.decode().strip()


def init_bare(path: Path, **config: str) -> Path:
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    for key, value in config.items():
        git(path, "config", key, value)
    return path


def write_raw_commit(repo: Path, ref: str, path: str, data: bytes) -> str:
    """Point ``ref`` at a new commit holding ``data`` at ``path``, with git itself."""
    blob = git(repo, "hash-object", "-w", "--stdin", input=data)
    tree = git(repo, "mktree", input=f"100644 blob {blob}\t{path}\n".encode())
    commit = git(repo, "commit-tree", tree, "-m", f"raw {os.urandom(4).hex()}")
    git(repo, "update-ref", ref, commit)
    return commit


@contextlib.contextmanager
def daemon(root: Path, port: int | None = None) -> Iterator[tuple[subprocess.Popen, int]]:
    need_binary("git", "apt-get install git")
    port = port or free_port()
    # the git-daemon program itself, not the `git` wrapper, so that SIGSTOP reaches the server
    exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True).stdout.strip()
    argv = [
        os.path.join(exec_path, "git-daemon"), "--reuseaddr", f"--base-path={root}", "--export-all", "--enable=receive-pack",
        "--listen=127.0.0.1", f"--port={port}", str(root),
    ]  # fmt: skip
    with running(argv, port) as proc:
        yield proc, port


@contextlib.contextmanager
def http_bridge(root: Path, port: int | None = None, auth: str | None = None) -> Iterator[tuple[subprocess.Popen, int]]:
    need_binary("git", "apt-get install git")
    port = port or free_port()
    env = {**os.environ}
    env.pop("GIT_BRIDGE_AUTH", None)
    if auth:
        env["GIT_BRIDGE_AUTH"] = auth
    argv = [sys.executable, str(BRIDGE), "--root", str(root), "--port", str(port)]
    with running(argv, port, env=env) as proc:
        yield proc, port


@contextlib.contextmanager
def paused(proc: subprocess.Popen) -> Iterator[None]:
    """SIGSTOP a server (it accepts connections in the kernel but never answers)."""
    freeze(proc.pid)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


@dataclass
class Servers:
    root: Path
    daemon_port: int
    http_port: int
    counter: int = 0

    def new_repo(self, prefix: str = "repo", **config: str) -> Path:
        self.counter += 1
        return init_bare(self.root / f"{prefix}-{self.counter}.git", **config)

    def url(self, transport: str, repo: Path, query: str = "") -> str:
        q = f"?{query}" if query else ""
        if transport == "file":
            return f"git+file://{repo}{q}"
        if transport == "daemon":
            return f"git://127.0.0.1:{self.daemon_port}/{repo.name}{q}"
        if transport == "http":
            return f"git+http://127.0.0.1:{self.http_port}/{repo.name}{q}"
        raise ValueError(transport)


@pytest.fixture(scope="session")
def git_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("git-root")
    with daemon(root) as (_d, dport), http_bridge(root) as (_h, hport):
        yield Servers(root, dport, hport)


TRANSPORTS = ["file", "daemon", "http"]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def repo(git_servers: Servers) -> Path:
    return git_servers.new_repo()


@pytest.fixture
def url_for(git_servers: Servers, transport: str) -> Callable[..., str]:
    return lambda repo, query="": git_servers.url(transport, repo, query)
