"""`python -m genrobust.remote_check [--remote NAME] [--write]`: can this checkout reach its DVC remote?

`make share` and `make pull` run it before DVC, because DVC's own words for a bad SSH setup neither name the
remote nor say what is wrong (dvc 3.67 with dvc-ssh 4.3): a closed port or unreachable host is
"unexpected error - [Errno 111] Connect call failed", a refused key "unexpected error - Permission denied for
user … on host …", and a remote folder without write permission "unexpected error - [Errno 2] No such file or
directory: No such file". Here each is one line naming the remote's URL, what failed and what to check, with exit
status 2. The check goes through DVC's own file system for the remote, so it reads the same config (`.dvc/config`
and `.dvc/config.local`: url, port, user, keyfile) that `dvc push`/`dvc pull` will.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

from .errors import UserError


def _explain(exc: BaseException, config: dict[str, Any]) -> str:
    """What failed, in the user's terms, from the exception DVC's file system raised."""
    import asyncssh

    where = f"{config.get('host', '?')}:{config.get('port') or 22}"
    if isinstance(exc, socket.gaierror):
        return f"host {config.get('host')!r} not found ({exc.strerror}); check the URL's host name"
    if isinstance(exc, (ConnectionRefusedError, TimeoutError)) or getattr(exc, "errno", None) in (
            errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT):
        return f"cannot connect to {where} ({exc}); is the host up and an SSH server listening on that port?"
    if isinstance(exc, asyncssh.PermissionDenied) or isinstance(exc.__cause__, asyncssh.PermissionDenied):
        key, user = config.get("keyfile", "~/.ssh/id_*"), config.get("user") or config.get("username")
        return (f"the server refused the login of {user!r} with key {key}; add its .pub "
                "to the user's ~/.ssh/authorized_keys there, or set `dvc remote modify --local <remote> keyfile …`")
    if isinstance(exc, (PermissionError, asyncssh.SFTPPermissionDenied)) or getattr(exc, "errno", None) in (
            errno.EACCES, errno.EPERM, errno.ENOENT, errno.EROFS):
        return f"cannot write there ({exc}); the remote folder (or its parent) must be writable by the SSH user"
    if isinstance(exc, (OSError, asyncssh.Error)):
        return f"{type(exc).__name__}: {exc}"
    raise exc


def check(repo_dir: Path, remote: str | None, write: bool) -> str:
    """The remote's URL once it answered (and, with `write`, took and gave back a small file); else UserError."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        repo = Repo(str(repo_dir))
    except DvcException as exc:
        raise UserError(f"{repo_dir}: {exc}") from exc
    with repo:
        try:
            found = repo.cloud.get_remote(remote, "push" if write else "pull")
        except DvcException as exc:
            raise UserError(f"DVC remote: {exc}") from exc
        config = repo.config["remote"][found.name]
        url = config["url"]
        try:
            if write:
                found.fs.makedirs(found.path, exist_ok=True)
                probe = found.fs.join(found.path, f".genrobust-write-check.{uuid.uuid4().hex}")
                found.fs.pipe_file(probe, b"")
                found.fs.rm(probe)
            else:
                found.fs.exists(found.path)
        except Exception as exc:  # noqa: BLE001 - _explain re-raises what it does not recognise
            raise UserError(f"DVC remote {found.name!r} ({url}): {_explain(exc, dict(found.fs.fs_args, **config))}")
    return url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genrobust.remote_check", description=__doc__.splitlines()[0])
    parser.add_argument("--remote", "-r", help="a remote's name (default: the default remote, as dvc push uses)")
    parser.add_argument("--write", action="store_true", help="also write and remove a small file (before a push)")
    parser.add_argument("--repo", type=Path, default=Path("."), help="the checkout (default: here)")
    args = parser.parse_args(argv)
    try:
        check(args.repo, args.remote, args.write)
    except UserError as exc:
        print(f"genrobust remote_check: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
