"""Wrong configuration gives a clear error naming the fix; secrets never show."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from celery_leader.backends.git import GitBackend
from celery_leader.lock import BackendUnavailable, ConfigurationError
from celery_leader.registry import open_backend
from celery_leader.testing.contract import sample_record
from tests.servers import free_port, running

from .conftest import Servers, git, http_bridge, init_bare, write_raw_commit

TIMEOUT = 5.0


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("git+ftp://host/repo.git", "not a git lock URL"),
        ("git://127.0.0.1/repo.git?color=blue", "unknown git:// option ?color="),
        ("git+https://user:s3cret@example.com/repo.git", "token_env"),
        ("git+https://example.com/repo.git?token_env=CL_TEST_UNSET_VAR", "CL_TEST_UNSET_VAR"),
        ("git+https://example.com/repo.git?token_env=not-a-name", "must name an environment variable"),
        ("git://127.0.0.1/repo.git?token_env=HOME", "git+https://"),
        ("git+file://relative/repo.git", "local path"),
        ("git+file:///srv/locks.git?stale_lock=-1", "seconds > 0"),
        ("git://127.0.0.1/repo.git?stale_lock=5", "git+file:// only"),
        ("git+ssh://git@github.com:org/repo.git", "git+ssh://git@host/org/repo.git"),
        ("git+ssh://git@example.com/repo.git?key=/nonexistent/key", "not a readable file"),
        ("git://127.0.0.1", "repository path"),
        ("git:///repo.git", "needs a host"),
        ("git://127.0.0.1/repo.git?ref=heads/x", "not a valid git ref name"),
        ("git://127.0.0.1/repo.git?ref=refs/celery-leader/a..b", "not a valid git ref name"),
        ("git://127.0.0.1/repo.git?path=../x.json", "not a valid file path"),
        ("git://127.0.0.1/repo.git?author=nobody", "Name <email>"),
        ("git://127.0.0.1/repo.git?probe=maybe", "?probe="),
    ],
)
def test_bad_urls_name_the_fix(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        GitBackend.from_url(url)
    assert fragment in str(info.value)
    assert "s3cret" not in str(info.value)


def test_registry_opens_every_scheme(tmp_path: Path) -> None:
    repo = init_bare(tmp_path / "r.git")
    for url in (f"git+file://{repo}", "git://127.0.0.1:1/r.git", "git+http://127.0.0.1:1/r.git",
                "git+https://example.com/r.git", "git+ssh://git@example.com/r.git"):
        backend = open_backend(url)
        assert isinstance(backend, GitBackend)
        assert backend.describe().split("://")[0] == url.split("://")[0]


def test_election_name_that_is_not_a_ref_name(tmp_path: Path) -> None:
    backend = GitBackend.from_url(f"git+file://{init_bare(tmp_path / 'r.git')}")
    with pytest.raises(ConfigurationError, match="not a valid git ref name"):
        backend.lock("has space")
    with pytest.raises(ConfigurationError, match="empty"):
        backend.lock("")


def test_missing_local_repository_says_how_to_create_it(tmp_path: Path) -> None:
    backend = GitBackend.from_url(f"git+file://{tmp_path}/nope.git")
    with pytest.raises(ConfigurationError, match="git init --bare"):
        backend.check(TIMEOUT)
    # during an election the same problem is retried, not fatal
    with pytest.raises(BackendUnavailable, match="git init --bare"):
        backend.lock("x").get(TIMEOUT)


def test_read_only_local_repository(tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess

    repo = init_bare(tmp_path / "r.git")
    refs = repo / "refs"
    if os.geteuid() != 0:
        refs.chmod(0o555)
        undo = ["chmod", "755", str(refs)]
    else:  # chmod does not stop root; an immutable directory does
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(refs)], capture_output=True).returncode:
            pytest.skip("running as root without chattr +i: cannot make the repository read-only")
        undo = [chattr, "-i", str(refs)]
    try:
        with pytest.raises(ConfigurationError, match="not writable"):
            GitBackend.from_url(f"git+file://{repo}").check(TIMEOUT)
    finally:
        subprocess.run(undo, check=True)


@pytest.mark.parametrize("transport", ["daemon", "http"])
def test_unknown_remote_repository(git_servers: Servers, transport: str) -> None:
    backend = GitBackend.from_url(git_servers.url(transport, Path("/does-not-exist.git")))
    with pytest.raises(ConfigurationError) as info:
        backend.check(TIMEOUT)
    assert "not exported" in str(info.value) or "no git repository" in str(info.value)
    with pytest.raises(BackendUnavailable):
        backend.lock("x").get(TIMEOUT)


def test_daemon_without_receive_pack_fails_at_start_up(git_servers: Servers, tmp_path: Path) -> None:
    repo = git_servers.new_repo()
    port = free_port()
    exec_path = git(repo, "--exec-path")
    argv = [f"{exec_path}/git-daemon", "--reuseaddr", f"--base-path={git_servers.root}", "--export-all",
            "--listen=127.0.0.1", f"--port={port}", str(git_servers.root)]
    with running(argv, port):
        backend = GitBackend.from_url(f"git://127.0.0.1:{port}/{repo.name}")
        with pytest.raises(ConfigurationError, match="--enable=receive-pack"):
            backend.check(TIMEOUT)
        # reading works, writing says why not
        assert backend.lock("x").get(TIMEOUT) is None
        with pytest.raises(BackendUnavailable, match="receive-pack"):
            backend.lock("x").create(sample_record(), TIMEOUT)


def test_branch_ref_refused_as_non_fast_forward_names_the_setting(git_servers: Servers) -> None:
    repo = git_servers.new_repo(**{"receive.denyNonFastForwards": "true"})
    branch = GitBackend.from_url(git_servers.url("daemon", repo, "ref=refs/heads/leader-{name}"))
    with pytest.raises(ConfigurationError, match="receive.denyNonFastForwards"):
        branch.check(TIMEOUT)
    # the probe cleaned up after itself
    assert "probe" not in git(repo, "for-each-ref")
    lock = branch.lock("beat")
    v1 = lock.create(sample_record(), TIMEOUT)  # a new ref is no fast-forward question
    with pytest.raises(ConfigurationError, match="receive.denyNonFastForwards"):
        lock.update(sample_record(transitions=4), v1, TIMEOUT)
    # the default ref lives outside refs/heads/, which the setting does not cover
    default = GitBackend.from_url(git_servers.url("daemon", repo))
    default.check(TIMEOUT)
    dlock = default.lock("beat")
    v = dlock.create(sample_record(), TIMEOUT)
    for n in range(3):
        v = dlock.update(sample_record(transitions=4 + n), v, TIMEOUT)


@pytest.mark.parametrize("transport", ["file", "daemon", "http"])
def test_a_ref_with_other_files_is_never_overwritten(git_servers: Servers, transport: str) -> None:
    repo = git_servers.new_repo()
    blob = git(repo, "hash-object", "-w", "--stdin", input=b"print('hello')\n")
    blob2 = git(repo, "hash-object", "-w", "--stdin", input=b"{}")
    tree = git(repo, "mktree", input=f"100644 blob {blob}\tapp.py\n100644 blob {blob2}\tbeat.lock.json\n".encode())
    commit = git(repo, "commit-tree", tree, "-m", "real work")
    git(repo, "update-ref", "refs/heads/main", commit)
    lock = GitBackend.from_url(git_servers.url(transport, repo, "ref=refs/heads/main")).lock("beat")
    with pytest.raises(ConfigurationError, match="app.py"):
        lock.get(TIMEOUT)
    assert git(repo, "rev-parse", "refs/heads/main") == commit


@pytest.mark.parametrize("transport", ["file", "daemon", "http"])
def test_go_seed_style_history_is_read_and_replaced_by_one_commit(git_servers: Servers, transport: str) -> None:
    """A branch with a history of lock commits (as the Go seed writes) is read shallowly, then bounded."""
    repo = git_servers.new_repo()
    ref = "refs/celery-leader/beat"
    parent = write_raw_commit(repo, ref, "beat.lock.json", b'{"holderIdentity":"go","leaderTransitions":1}')
    for n in range(2, 5):
        blob = git(repo, "hash-object", "-w", "--stdin", input=b'{"holderIdentity":"go","leaderTransitions":%d}' % n)
        tree = git(repo, "mktree", input=f"100644 blob {blob}\tbeat.lock.json\n".encode())
        parent = git(repo, "commit-tree", tree, "-p", parent, "-m", f"renew {n}")
        git(repo, "update-ref", ref, parent)
    lock = GitBackend.from_url(git_servers.url(transport, repo)).lock("beat")
    got = lock.get(TIMEOUT)
    assert got is not None and got.record.holder == "go" and got.record.transitions == 4
    assert got.version == parent
    lock.update(got.record.evolve(holder="py", transitions=5), got.version, TIMEOUT)
    assert git(repo, "rev-list", "--count", ref) == "1"


def test_http_token_from_env_and_never_shown(git_servers: Servers, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    secret = "tok-" + "9f3b2c7d1e"
    repo = git_servers.new_repo()
    caplog.set_level(logging.DEBUG)
    with http_bridge(git_servers.root, auth=f"deploy:{secret}") as (_proc, port):
        base = f"git+http://127.0.0.1:{port}/{repo.name}"
        # no credential: 401 at start-up, with the option to use
        with pytest.raises(ConfigurationError, match="token_env") as info:
            GitBackend.from_url(base).check(TIMEOUT)
        messages = [str(info.value)]
        # a wrong token
        monkeypatch.setenv("CL_GIT_TOKEN", "wrong-token")
        wrong = GitBackend.from_url(f"{base}?token_env=CL_GIT_TOKEN&username=deploy")
        with pytest.raises(ConfigurationError, match=r"token in \$CL_GIT_TOKEN was refused") as info:
            wrong.check(TIMEOUT)
        messages.append(str(info.value))
        with pytest.raises(BackendUnavailable) as info2:
            wrong.lock("x").get(TIMEOUT)
        messages.append(str(info2.value))
        # the right one
        monkeypatch.setenv("CL_GIT_TOKEN", secret)
        good = GitBackend.from_url(f"{base}?token_env=CL_GIT_TOKEN&username=deploy")
        good.check(TIMEOUT)
        lock = good.lock("x")
        v = lock.create(sample_record(), TIMEOUT)
        lock.update(sample_record(transitions=4), v, TIMEOUT)
        messages += [good.describe(), lock.describe(), repr(good)]
        assert "$CL_GIT_TOKEN" in good.describe()
    for text in messages + [caplog.text]:
        assert secret not in text


def test_commits_carry_our_author_and_no_parents(git_servers: Servers) -> None:
    repo = git_servers.new_repo()
    backend = GitBackend.from_url(git_servers.url("daemon", repo, "author=Beat Bot <beat@example.com>"))
    lock = backend.lock("beat")
    v = lock.create(sample_record(), TIMEOUT)
    for n in range(5):
        v = lock.update(sample_record(transitions=4 + n), v, TIMEOUT)
    ref = "refs/celery-leader/beat"
    assert git(repo, "log", "-1", "--format=%an <%ae>|%P", ref) == "Beat Bot <beat@example.com>|"
    assert git(repo, "rev-list", "--count", ref) == "1"
    assert git(repo, "ls-tree", "--name-only", ref) == "beat.lock.json"
    assert '"leaderTransitions":8' in git(repo, "show", f"{ref}:beat.lock.json")


def test_custom_ref_and_nested_path(git_servers: Servers, transport: str) -> None:
    repo = git_servers.new_repo()
    lock = GitBackend.from_url(
        git_servers.url(transport, repo, "ref=refs/locks/{name}&path=leader/{name}.json")
    ).lock("beat")
    v = lock.create(sample_record(), TIMEOUT)
    assert git(repo, "show", "refs/locks/beat:leader/beat.json").startswith("{")
    got = lock.get(TIMEOUT)
    assert got is not None and got.version == v and got.record == sample_record()


def test_hook_refusing_our_ref_fails_at_start_up(git_servers: Servers) -> None:
    repo = git_servers.new_repo()
    hook = repo / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'refs outside refs/heads are not allowed here' >&2\nexit 1\n")
    hook.chmod(0o755)
    backend = GitBackend.from_url(git_servers.url("daemon", repo))
    with pytest.raises(ConfigurationError, match="hooks or branch protection"):
        backend.check(TIMEOUT)
    with pytest.raises(ConfigurationError, match="hooks or branch protection"):
        backend.lock("beat").create(sample_record(), TIMEOUT)
    assert git(repo, "for-each-ref") == ""


def test_probe_ref_that_cannot_be_deleted_is_named(git_servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
    repo = git_servers.new_repo()  # (receive.denyDeletes covers refs/heads/ only: a hook refuses deletions)
    hook = repo / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\nwhile read old new ref; do\n"
        "  if [ \"$new\" = 0000000000000000000000000000000000000000 ]; then echo 'no deletions' >&2; exit 1; fi\n"
        "done\n"
    )
    hook.chmod(0o755)
    backend = GitBackend.from_url(git_servers.url("daemon", repo))
    with caplog.at_level(logging.WARNING, logger="celery_leader"):
        backend.check(TIMEOUT)  # a leftover probe ref is not a reason to refuse to start
    left = git(repo, "for-each-ref", "--format=%(refname)")
    assert left.startswith("refs/celery-leader/probe-")
    assert any(left in r.getMessage() and "delete it by hand" in r.getMessage() for r in caplog.records)
    # ?probe=0 only reads
    GitBackend.from_url(git_servers.url("daemon", repo, "probe=0")).check(TIMEOUT)
    assert git(repo, "for-each-ref", "--format=%(refname)") == left


def test_a_web_server_that_is_not_a_git_server(tmp_path: Path) -> None:
    """A captive portal or static site answering 200 with HTML: retried as unavailable, never a crash."""
    import sys

    (tmp_path / "r.git" / "info").mkdir(parents=True)
    (tmp_path / "r.git" / "info" / "refs").write_text("<html>please log in</html>\n")
    port = free_port()
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    with running(argv, port):
        backend = GitBackend.from_url(f"git+http://127.0.0.1:{port}/r.git")
        for call in (lambda: backend.check(TIMEOUT), lambda: backend.lock("x").get(TIMEOUT),
                     lambda: backend.lock("x").create(sample_record(), TIMEOUT)):
            with pytest.raises(BackendUnavailable, match="unexpected answer"):
                call()


def test_probe_is_cleaned_up_even_when_check_times_out(git_servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine checks with a short budget; no probe cut off by it stays behind.

    A cut-off probe deletes its ref in its abandoned worker thread; one whose creation the
    server applied after that cleanup read the refs (a slow server) is deleted by the next
    check (here with a stale bound of 0 s; the deterministic case is the test below).
    """
    import threading
    import time

    import celery_leader.backends.git as git_module

    repo = git_servers.new_repo()
    backend = GitBackend.from_url(git_servers.url("daemon", repo))
    for budget in (0.005, 0.02, 0.04):
        try:
            backend.check(budget)
        except BackendUnavailable:
            pass
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(t.name == "celery-leader-git-check" for t in threading.enumerate()):
        time.sleep(0.05)  # the cut-off probes finish in their abandoned worker threads
    monkeypatch.setattr(git_module, "PROBE_STALE_AFTER", 0.0)
    while True:
        backend.check(TIMEOUT)  # sweeps what a write that landed late left
        if git(repo, "for-each-ref") == "" or time.monotonic() > deadline:
            break
    assert git(repo, "for-each-ref") == "", "a probe ref was left behind"


@pytest.mark.parametrize("transport", ["file", "daemon"])
def test_lock_path_that_is_a_symlink_is_garbage_not_a_crash(git_servers: Servers, transport: str) -> None:
    repo = git_servers.new_repo()
    target = git(repo, "hash-object", "-w", "--stdin", input=b"/etc/passwd")
    tree = git(repo, "mktree", input=f"120000 blob {target}\tbeat.lock.json\n".encode())
    commit = git(repo, "commit-tree", tree, "-m", "a link")
    git(repo, "update-ref", "refs/celery-leader/beat", commit)
    lock = GitBackend.from_url(git_servers.url(transport, repo)).lock("beat")
    got = lock.get(TIMEOUT)
    assert got is not None and got.version == commit
    assert got.record.decode_error and "not a regular file" in got.record.decode_error
    lock.update(sample_record(), got.version, TIMEOUT)
    assert git(repo, "ls-tree", "refs/celery-leader/beat").startswith("100644 blob")


_STALL_HOOK = """#!/bin/sh
# stall the first write of a start-up probe (its creation) until the test opens the gate
while read old new ref; do
  case "$ref" in
    */probe-*)
      if [ "$old" = 0000000000000000000000000000000000000000 ] && [ ! -e "{gate}" ]; then
        : > "{stalled}"
        n=0
        while [ ! -e "{gate}" ] && [ $n -lt 2400 ]; do sleep 0.05; n=$((n + 1)); done
      fi;;
  esac
done
exit 0
"""


def test_probe_that_lands_after_check_gave_up_is_swept_by_the_next_check(
    git_servers: Servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server applies a probe's creation after check() and its cleanup gave up on it.

    The cleanup read the refs before the write landed, so it found nothing to delete;
    the next check() must delete that probe (it is older than the bound, here 0 s).
    """
    import threading
    import time

    import celery_leader.backends.git as git_module

    repo = git_servers.new_repo()
    gate, stalled = tmp_path / "gate", tmp_path / "stalled"
    hook = repo / "hooks" / "pre-receive"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(_STALL_HOOK.format(gate=gate, stalled=stalled))
    hook.chmod(0o755)
    backend = GitBackend.from_url(git_servers.url("daemon", repo))

    def check_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "celery-leader-git-check"]

    budget = 0.5
    while not stalled.exists():  # the budget must let the probe's first push reach the server
        with pytest.raises(BackendUnavailable):
            backend.check(budget)
        for thread in check_threads():
            thread.join(60)  # the cut-off check's cleanup has run (and found no probe ref)
        budget *= 2
        assert budget < 60, "the probe's first push never reached the server"
    assert git(repo, "for-each-ref") == ""
    gate.touch()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and git(repo, "for-each-ref") == "":
        time.sleep(0.02)  # the stalled write lands now, after everyone gave up on it
    (leaked,) = git(repo, "for-each-ref", "--format=%(refname)").splitlines()
    assert "/probe-" in leaked
    backend.check(TIMEOUT)  # a young probe may be another process's check in progress: kept
    assert git(repo, "for-each-ref", "--format=%(refname)") == leaked
    monkeypatch.setattr(git_module, "PROBE_STALE_AFTER", 0.0)
    backend.check(TIMEOUT)
    assert git(repo, "for-each-ref") == ""
