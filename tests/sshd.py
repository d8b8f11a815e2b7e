"""A real OpenSSH server on 127.0.0.1 for the sharing tests: its own config, host key, port and login key.

Where the tests run as root (CI), the server logs in an unprivileged user made for it, and the remote folder is
owned by that user; otherwise it logs in the user running the tests (OpenSSH runs unprivileged for its own user).
Everything lives in a folder under /tmp that the logged-in user can reach (pytest's own folders are private).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_USER = "genrobust-ssh"      # made by the tests when they run as root
SHARE_GROUP = "genrobust-share"


def is_root() -> bool:
    return os.geteuid() == 0


def ensure_user(name: str, group: str) -> None:
    """An unprivileged login user in `group`, not locked (`-p '*'`: OpenSSH refuses locked accounts without PAM)."""
    if subprocess.run(["getent", "group", group], capture_output=True).returncode != 0:
        subprocess.run(["groupadd", group], check=True)
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--gid", group,
                        "--shell", "/bin/sh", "--password", "*", name], check=True)


def unavailable() -> str | None:
    """Why this machine cannot run the server (one line), or None."""
    if not Path(SSHD).is_file():
        return f"no OpenSSH server ({SSHD}): apt-get install openssh-server (.ci/run does)"
    if not shutil.which("ssh-keygen"):
        return "no ssh-keygen: apt-get install openssh-client"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def public_dir(prefix: str) -> Path:
    """A folder under /tmp that every user can enter (files inside keep their own modes)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def remote_folder(server: "SSHServer", name: str) -> Path:
    """A folder on the storage server that the SSH user owns (a DVC remote's root)."""
    path = server.root / name
    path.mkdir()
    shutil.chown(path, server.user)
    return path


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path


class SSHServer:
    """`sshd -D` with a config of its own: key logins only, SFTP in process, no PAM, nothing read from /etc/ssh."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.user = SSH_USER if is_root() else subprocess.run(["id", "-un"], capture_output=True, text=True,
                                                              check=True).stdout.strip()
        if is_root():
            ensure_user(self.user, SHARE_GROUP)
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)      # OpenSSH's privilege separation folder
        self.port = free_port()
        self.key = keygen(root / "client_key")                       # the login key, in authorized_keys
        self.other_key = keygen(root / "stranger_key")               # a key the server does not know
        keygen(root / "host_key")
        (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
        (root / "authorized_keys").chmod(0o644)
        (root / "sshd_config").write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}",
            f"PidFile {root / 'sshd.pid'}", f"AuthorizedKeysFile {root / 'authorized_keys'}",
            f"AllowUsers {self.user}", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", "UsePAM no", "StrictModes no", "Subsystem sftp internal-sftp",
            "MaxStartups 100", "MaxSessions 100", "LogLevel ERROR", ""]))
        self.process: subprocess.Popen | None = None

    def url(self, path: Path | str) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        with open(self.root / "sshd.log", "ab") as log:
            self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()[-2000:]}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not listen on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        """Kill the server and every connection it serves (each runs in a session of its own, so the process
        group is not enough: its descendants are found through /proc)."""
        if self.process is None:
            return
        for pid in [*descendants(self.process.pid), self.process.pid]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=30)
        self.process = None


def descendants(pid: int) -> list[int]:
    """The processes under `pid` (children, their children, …), from the parent ids in /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found
