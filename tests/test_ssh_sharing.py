"""Sharing between machines through a DVC SSH remote on a real OpenSSH server (tests/sshd.py), as labs do it.

Every "machine" is a checkout with its own DVC cache; all of them reach the server over SSH on 127.0.0.1 with the
README's commands (`dvc remote add -d nas ssh://…`, `dvc remote modify --local nas keyfile …`, `make share`,
`make pull`). The end-to-end tests start from a copy of the session's main run: no DAG is run again here.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .conftest import ENV, MAIN_TARGET, copy_project, run
from .sshd import SSHServer, free_port, is_root, public_dir, remote_folder, unavailable

WHY_NOT = unavailable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
GIT = ["git", "-c", "user.email=ci@genrobust.invalid", "-c", "user.name=ci"]


@pytest.fixture(scope="module")
def server() -> Iterator[SSHServer]:
    """The storage server. As root (CI) it must start; as another user OpenSSH may refuse to run: a skip says why."""
    sshd = SSHServer(public_dir("genrobust-sshd-"))
    try:
        sshd.start()
    except RuntimeError as exc:
        shutil.rmtree(sshd.root)
        if is_root():
            raise
        pytest.skip(f"sshd does not start for this user: {str(exc).splitlines()[-1]}")
    yield sshd
    sshd.stop()
    shutil.rmtree(sshd.root)


def use_remote(project: Path, server: SSHServer, folder: Path, name: str = "nas") -> None:
    """The README's two commands: the remote (in .dvc/config, shared through git) and this machine's key (local)."""
    run(["dvc", "remote", "add", "--default", "--force", name, server.url(folder)], project)
    run(["dvc", "remote", "modify", "--local", name, "keyfile", str(server.key)], project)


def clone(source: Path, destination: Path, server: SSHServer, remote: str = "nas") -> Path:
    """Another machine: a git clone (its own, empty DVC cache), with its key set again (config.local stays home)."""
    run(["git", "clone", "-q", str(source), str(destination)], source.parent)
    run(["dvc", "remote", "modify", "--local", remote, "keyfile", str(server.key)], destination)
    return destination


def objects(store: Path) -> dict[str, Path]:
    """A DVC remote's or cache's objects by name (`<md5>` or `<md5>.dir`); temporary `*.tmp` names left out."""
    return {path.parent.name + path.name: path for path in (store / "files" / "md5").glob("*/*")
            if not path.name.endswith(".tmp")}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def misnamed(store: Path) -> list[str]:
    """Objects whose content's md5 is not their name: what a half-written transfer would leave (none may)."""
    return [name for name, path in objects(store).items() if md5(path) != name.removesuffix(".dir")]


def recorded(project: Path) -> dict[str, str]:
    """Every output dvc.lock and the *.dvc files record: path -> md5 (`….dir` for a directory)."""
    outs = [out for stage in yaml.safe_load((project / "dvc.lock").read_text())["stages"].values()
            for out in stage.get("outs", [])]
    outs += [out for dvc_file in project.glob("?*.dvc") if dvc_file.is_file() for out in yaml.safe_load(dvc_file.read_text())["outs"]]
    return {out["path"]: out["md5"] for out in outs}


def half_written(project: Path, remote: Path) -> list[str]:
    """Tracked files in the work tree whose content is not what is recorded for them (absent ones are fine;
    `*.tmp` are a killed checkout's temporary files, which .dvcignore keeps out of DVC's sight)."""
    expected: dict[Path, str] = {}
    for path, digest in recorded(project).items():
        if digest.endswith(".dir"):
            listing = json.loads((remote / "files" / "md5" / digest[:2] / digest[2:]).read_text())
            if (project / path).is_dir():
                expected.update({extra: "not recorded" for extra in (project / path).rglob("*")
                                 if extra.is_file() and extra.suffix != ".tmp"})
            expected.update({project / path / entry["relpath"]: entry["md5"] for entry in listing})
        else:
            expected[project / path] = digest
    return [str(path) for path, digest in expected.items() if path.is_file() and md5(path) != digest]


def change_evaluation(project: Path, n: int) -> None:
    """A param change that only `evaluate` depends on: `n` test points under APGD-CE alone (seconds on a CPU)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["presets"]["smoke"]["evaluate"].update(n_examples=n, version="custom", attacks=["apgd-ce"])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def together(commands: list[tuple[list[str], Path]]) -> None:
    """Start the commands at once (each on its own machine), then wait: each must succeed."""
    started = [subprocess.Popen(args, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for args, cwd in commands]
    for process, (args, _) in zip(started, commands):
        output = process.communicate(timeout=900)[0]
        assert process.returncode == 0, f"{' '.join(args)} failed:\n{output[-4000:]}"


@pytest.fixture(scope="module")
def machine_a(main_run: Path, server: SSHServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Machine A: the main run, shared over SSH with `make share` and committed."""
    project = tmp_path_factory.mktemp("ssh_sharing") / "a"
    shutil.copytree(main_run, project, symlinks=True)
    run(["git", "init", "-q"], project)
    use_remote(project, server, remote_folder(server, "genrobust-dvc"))
    run(["make", "share"], project)
    run(["git", "add", "-A"], project)
    run(GIT + ["commit", "-qm", "machine A's run"], project)
    return project


@pytest.mark.e2e
def test_a_second_machine_pulls_over_ssh_and_shares_its_change_next_to_the_first(machine_a: Path, server: SSHServer,
                                                                                  tmp_path: Path) -> None:
    remote = server.root / "genrobust-dvc"
    first = set(objects(remote))
    assert set(recorded(machine_a).values()) <= first and not misnamed(remote)
    b = clone(machine_a, tmp_path / "b", server)
    run(["make", "pull"], b)
    nothing = run(["snakemake", "-n", "--cores", "1", MAIN_TARGET], b)
    assert "Nothing to be done" in nothing.stdout + nothing.stderr
    assert set(objects(b / ".dvc" / "cache")) == first                        # B's own cache, filled over SSH
    assert "Data and pipelines are up to date" in run(["dvc", "status", "--with-deps", "evaluate"], b).stdout
    change_evaluation(b, 12)
    ran = run(["snakemake", "--cores", "2", MAIN_TARGET], b)
    ran = ran.stdout + ran.stderr                                               # its job stats, then the jobs
    assert dict(re.findall(r"^(\w+)\s+(\d+)$", ran, re.M)) == {"evaluate": "1", "total": "1"}, ran
    assert json.loads((b / MAIN_TARGET).read_text())["n_examples"] == 12
    run(["make", "share"], b)
    new = set(recorded(b).values()) - set(recorded(machine_a).values())
    assert new and set(objects(remote)) == first | new and not misnamed(remote)


@pytest.mark.e2e
def test_two_machines_push_at_once_and_a_third_pulls_both(machine_a: Path, server: SSHServer, tmp_path: Path) -> None:
    """Each machine reruns what its own param change needs (`dvc repro`) and pushes it while the other pushes.
    Objects are named by their content's md5, so two pushes never write one name with different bytes."""
    remote = server.root / "genrobust-dvc"
    before = set(objects(remote))
    machines = {n: clone(machine_a, tmp_path / f"n{n}", server) for n in (8, 10)}
    together([(["dvc", "pull", "--with-deps", "evaluate"], machine) for machine in machines.values()])
    for n, machine in machines.items():        # one after the other: two PyTorch jobs on 2 cores stall each other
        change_evaluation(machine, n)
        run(["dvc", "repro", "evaluate"], machine)
    together([(["dvc", "push", "evaluate"], machine) for machine in machines.values()])
    results = {n: recorded(machine)[MAIN_TARGET] for n, machine in machines.items()}
    assert len(set(results.values()) - before) == 2 and set(results.values()) <= set(objects(remote))
    assert before <= set(objects(remote)) and not misnamed(remote)
    third = clone(machine_a, tmp_path / "third", server)
    for n, machine in machines.items():
        run(GIT + ["commit", "-qam", f"n_examples {n}"], machine)
        run(["git", "fetch", "-q", str(machine), f"HEAD:n{n}"], third)
        run(["git", "checkout", "-q", f"n{n}"], third)
        run(["dvc", "pull", "evaluate"], third)                               # just the results of this commit
        assert (third / MAIN_TARGET).read_bytes() == (machine / MAIN_TARGET).read_bytes()
        assert json.loads((third / MAIN_TARGET).read_text())["n_examples"] == n


TARGETS = ["--with-deps", "evaluate", "big.bin.dvc"]      # what `make share` pushes, and a big file


def cut_off(args: list[str], project: Path, watched: Path, server: SSHServer) -> subprocess.CompletedProcess:
    """Run a DVC transfer and kill the SSH server (and its connections) once its first file appears in `watched`."""
    process = subprocess.Popen(args, cwd=project, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while process.poll() is None and not any(path.is_file() for path in watched.rglob("*")):
        time.sleep(0.002)
    server.stop()
    output, errors = process.communicate(timeout=300)
    return subprocess.CompletedProcess(args, process.returncode, output, errors)


@pytest.mark.e2e
def test_a_transfer_cut_off_leaves_nothing_half_written_and_the_same_command_completes(
        machine_a: Path, server: SSHServer, tmp_path: Path) -> None:
    """The digits run's 9 MB crosses 127.0.0.1 in a fraction of a second: a 64 MB file (a checkpoint's size)
    keeps each transfer going long enough to be cut."""
    pusher = tmp_path / "pusher"
    shutil.copytree(machine_a, pusher, symlinks=True)               # A's work tree and cache, before any push
    (pusher / "big.bin").write_bytes(hashlib.shake_256(b"genrobust").digest(64 << 20))
    run(["dvc", "add", "-q", "big.bin"], pusher)
    cut = remote_folder(server, "cut")
    use_remote(pusher, server, cut, "cut")
    try:
        pushed = cut_off(["dvc", "push", *TARGETS], pusher, cut, server)
    finally:
        server.start()
    assert pushed.returncode != 0 and "ERROR" in pushed.stderr, pushed.stderr
    assert recorded(pusher)["big.bin"] not in objects(cut) and not misnamed(cut)
    assert "pushed" in run(["dvc", "push", *TARGETS], pusher).stdout                # the same command, again
    assert set(recorded(pusher).values()) <= set(objects(cut)) and not misnamed(cut)

    run(["git", "add", "-A"], pusher)
    run(GIT + ["commit", "-qm", "a big file"], pusher)
    puller = clone(pusher, tmp_path / "puller", server, "cut")
    try:
        pulled = cut_off(["dvc", "pull", *TARGETS], puller, puller / ".dvc" / "cache", server)
    finally:
        server.start()
    assert pulled.returncode != 0 and "ERROR" in pulled.stderr, pulled.stderr
    assert not misnamed(puller / ".dvc" / "cache") and not half_written(puller, cut)
    run(["dvc", "pull", *TARGETS], puller)                                         # the same command, again
    assert "Data and pipelines are up to date" in run(["dvc", "status", *TARGETS], puller).stdout
    assert not half_written(puller, cut) and all((puller / path).exists() for path in recorded(puller))


@pytest.mark.parametrize("setup, message", [
    ("closed port", "cannot connect to 127.0.0.1:{port}"),
    ("refused key", "the server refused the login of '{user}' with key {stranger_key}"),
    ("read-only folder", "cannot write there (Permission denied)"),
])
def test_a_bad_ssh_setup_stops_make_share_with_one_line(server: SSHServer, tmp_path: Path, setup: str,
                                                         message: str) -> None:
    project = copy_project(tmp_path / "p")
    run(["git", "init", "-q"], project)
    folder = remote_folder(server, f"bad-{setup.replace(' ', '-')}")
    use_remote(project, server, folder)
    url = server.url(folder)
    if setup == "closed port":
        closed = free_port()
        url = url.replace(f":{server.port}/", f":{closed}/")
        run(["dvc", "remote", "modify", "nas", "url", url], project)
        message = message.format(port=closed)
    elif setup == "refused key":
        run(["dvc", "remote", "modify", "--local", "nas", "keyfile", str(server.other_key)], project)
        message = message.format(user=server.user, stranger_key=server.other_key)
    else:
        folder.chmod(0o555)
    # As a user types it: not as a sub-make of CI's `make test`, whose MAKELEVEL would make it say "make[1]:".
    typed = {key: value for key, value in ENV.items() if key not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    done = subprocess.run(["make", "share"], cwd=project, env=typed, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "dvc commit" not in done.stdout                  # stopped before DVC ran
    errors = [line for line in done.stderr.splitlines() if not line.startswith("make:")]
    assert errors == [errors[0]] and errors[0].startswith(f"genrobust remote_check: error: DVC remote 'nas' ({url}): ")
    assert message in errors[0], errors[0]
