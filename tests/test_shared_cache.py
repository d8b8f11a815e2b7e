"""One machine, several users: one DVC cache on a shared file system, used by two checkouts of two users of one group
(README, "Sharing and scaling": `dvc cache dir …`, `cache.shared group`, `cache.type symlink`)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ENV
from .sshd import SHARE_GROUP, ensure_user, is_root, public_dir

USERS = ("genrobust-alice", "genrobust-bob")
GIT = ["git", "-c", "user.email=ci@genrobust.invalid", "-c", "user.name=ci"]
SHARDS = "data/digits/generated/edm/shards"

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not is_root(), reason="needs root: it makes two users of one group")]


def as_user(user: str, args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """A command run as `user` (uid, group and supplementary groups) in its folder, which is its home.

    It keeps one capability, CAP_DAC_READ_SEARCH, so that it can run this venv's Python wherever that lives (CI's
    interpreter is under /root, which no other user may enter): every write is still checked against the user's
    own uid and groups, which is what sharing a cache is about. That the group may read the cache is asserted on
    the files' modes instead."""
    home = next(folder for folder in (cwd, *cwd.parents) if folder.name == user)      # <machine>/<user>
    env = dict(ENV, HOME=str(home), USER=user, LOGNAME=user)
    done = subprocess.run(["setpriv", f"--reuid={user}", f"--regid={SHARE_GROUP}", "--init-groups",
                           "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 or not check, f"{user}: {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def chown_tree(root: Path, user: str) -> None:
    for path in [root, *root.rglob("*")]:
        os.lchown(path, pwd.getpwnam(user).pw_uid, -1)


def objects(cache: Path) -> dict[Path, tuple[int, int, int]]:
    """The cache's files with what a rewrite or a second copy would change: inode, size, mtime."""
    return {path: (path.stat().st_ino, path.stat().st_size, path.stat().st_mtime_ns)
            for path in cache.rglob("*") if path.is_file()}


def disk_usage_kib(path: Path) -> int:
    """`du -sk`: the blocks the files take (a symlink takes none); links are not followed."""
    return int(subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


@pytest.fixture(scope="module")
def machine() -> Iterator[Path]:
    """A folder every user can enter, the two users in one group, and a cache folder the group may write."""
    for user in USERS:
        ensure_user(user, SHARE_GROUP)
    base = public_dir("genrobust-shared-cache-")
    cache = base / "dvc-cache"
    cache.mkdir()
    shutil.chown(cache, group=SHARE_GROUP)
    cache.chmod(0o2775)
    for user in USERS:
        (base / user).mkdir()
        shutil.chown(base / user, user, SHARE_GROUP)
    reached = as_user(USERS[0], [sys.executable, "-c", "import dvc"], base / USERS[0], check=False)
    if reached.returncode != 0:
        shutil.rmtree(base)
        pytest.skip(f"cannot run this venv's Python as another user: {reached.stderr.strip()[-200:]}")
    yield base
    shutil.rmtree(base)


def test_a_second_users_checkout_links_the_first_ones_shards_from_the_shared_cache(main_run: Path,
                                                                                  machine: Path) -> None:
    alice, bob = USERS
    cache = machine / "dvc-cache"
    first = machine / alice / "project"
    shutil.copytree(main_run, first, symlinks=True)
    chown_tree(first, alice)
    for command in (["git", "init", "-q"], ["dvc", "cache", "dir", str(cache)],
                    ["dvc", "config", "cache.shared", "group"], ["dvc", "config", "cache.type", "symlink"],
                    ["dvc", "commit", "--force", "--with-deps", "evaluate"], ["git", "add", "-A"],
                    [*GIT, "commit", "-qm", "alice's run"]):
        as_user(alice, command, first)
    shard = next((first / SHARDS).glob("shard-*.npz"))
    assert shard.is_symlink() and shard.resolve().is_relative_to(cache)       # alice's files moved into the cache
    cached = objects(cache)
    group = grp.getgrnam(SHARE_GROUP).gr_gid
    assert cached and all(path.stat().st_gid == group and path.stat().st_mode & 0o040 for path in cached)

    second = machine / bob / "project"
    # Standing in for the lab's git server: alice's own repository, which git reads for another user when told to.
    as_user(bob, ["git", "config", "--global", "--add", "safe.directory", str(first / ".git")], second.parent)
    as_user(bob, ["git", "clone", "-q", str(first), str(second)], second.parent)
    as_user(bob, ["dvc", "checkout", "--with-deps", "evaluate"], second)
    links = sorted((second / SHARDS).iterdir())
    assert links and all(link.is_symlink() and link.resolve() == (first / SHARDS / link.name).resolve()
                         for link in links)
    assert objects(cache) == cached                                           # nothing added, copied or rewritten
    assert "Data and pipelines are up to date" in as_user(bob, ["dvc", "status", "--with-deps", "evaluate"],
                                                          second).stdout
    shards_kib = sum(link.resolve().stat().st_size for link in links) // 1024
    # A copy takes the shards' size (the main run's own files); bob's links take a block each.
    usage = {"copy": disk_usage_kib(main_run / SHARDS), "links": disk_usage_kib(second / SHARDS),
             "bob's outputs": disk_usage_kib(second / "data") + disk_usage_kib(second / "models"),
             "cache": disk_usage_kib(cache)}
    assert usage["copy"] >= shards_kib > 10 * usage["links"] and 10 * usage["bob's outputs"] < usage["cache"], usage
    # bob adds to the cache too: his object lands in the folders alice's commit made (group-writable: shared group).
    as_user(bob, ["sh", "-c", "echo 'a note of bob' > notes.txt && dvc add -q notes.txt"], second)
    added, = set(objects(cache)) - set(cached)
    assert added.stat().st_uid == pwd.getpwnam(bob).pw_uid and added.stat().st_gid == group
