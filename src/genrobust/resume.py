"""Resume states that outlive a bad file: the state before the current one is kept beside it.

A resume state is the only record of what may be days of training, and a file can go bad after
its atomic write (a full or flaky disk, a node lost while a network file system flushes, a
careless copy). So `save` keeps the state it replaces as `<name>.prev` (`state.pt.prev`,
`ckpt.pt.prev`): it writes the new state to a temporary file, renames the current one to
`.prev` and only then renames the new one into place, so one good state exists at every instant.

On load each file gets one of three verdicts, and they are handled differently on purpose:

- unreadable (torch.load fails, or it is not a dict with the expected entries): damage. We warn
  and fall back to `.prev`; when no state is usable we stop with an error that names the files
  and `--restart`, because quietly training again from step 0 would throw the days away.
- made with other settings (the caller's `check` says why): not damage but what changing params
  normally leaves behind. Snakemake reruns a job whose params changed, and its `--work` folder
  still holds the old run's state; stopping there would break that everyday workflow. So the
  state is moved aside to `<name>.stale` (kept: moving it back undoes a change made by mistake;
  an older `.stale` is replaced and its `.prev` dropped, to bound the disk used), the log says
  so, and training starts from step 0.
- usable: training resumes from it.

`--restart` (`restart=True`) starts from step 0 on purpose; it sets the old state aside the same way.

Under torchrun every process loads but only the first one renames or saves. A damaged current
file is never renamed at load (another process may still be reading it); instead the first save
after a fallback overwrites it rather than keeping it as `.prev`, so the good previous state stays.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable, Collection

import torch
from torch.utils._pytree import tree_map

from . import distributed, io
from .errors import UserError

Log = Callable[[str], None]


class StateFile:
    """The resume state at `path`, with `<name>.prev` (the one before) and `<name>.stale` (set aside)."""

    def __init__(self, path: Path, keys: Collection[str], weights_only: bool = True) -> None:
        self.path = Path(path)
        self.previous = self.path.with_name(self.path.name + ".prev")
        self.stale = self.path.with_name(self.path.name + ".stale")
        self.keys = frozenset(keys)
        self.weights_only = weights_only
        self._current_is_good = False   # only a file we loaded or wrote may become `.prev`
        self._writer: threading.Thread | None = None
        self._failure: BaseException | None = None

    def load(self, check: Callable[[dict[str, Any]], str | None], log: Log,
             restart: bool = False) -> tuple[Path, dict[str, Any]] | None:
        """The newest usable state and the file it came from; None to start from step 0.

        `check(state)` returns why a readable state cannot continue this run (other settings), or None.
        """
        if restart:
            self._set_aside(log, "--restart given")
            return None
        passed_over: list[str] = []   # why newer files were not used
        damaged = False
        for candidate in (self.path, self.previous):
            if not candidate.is_file():
                if candidate == self.path:
                    passed_over.append(f"{candidate}: missing")
                continue
            state, unreadable = self._read(candidate)
            if unreadable is not None:
                passed_over.append(f"{candidate}: unreadable ({unreadable})")
                damaged = True
                continue
            reason = check(state)
            if reason is not None:
                if damaged:
                    passed_over.append(f"{candidate}: {reason}")
                    break
                self._set_aside(log, reason)
                return None
            for problem in passed_over:
                log(f"warning: {problem}; falling back to {candidate}")
            self._current_is_good = candidate == self.path
            return candidate, state
        if damaged:
            raise UserError(f"no usable resume state ({'; '.join(passed_over)}). To train again from step 0 on "
                            f"purpose, rerun with --restart (or delete {self.path} and {self.previous})")
        return None

    def save_in_background(self, state: dict[str, Any]) -> None:
        """Copy `state` to host memory now and write it from a thread while training goes on (first process only).

        A paper-scale state is gigabytes: written in line, every other GPU would wait in its next
        all-reduce. The write is the same atomic one, so a kill during it leaves the previous
        state in place; the next save, or `wait`, waits for it and raises what it raised.
        """
        if not distributed.is_main():
            return
        self.wait()
        snapshot = tree_map(lambda v: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v, state)
        self._writer = threading.Thread(target=self._write, args=(snapshot,), name=f"save {self.path.name}")
        self._writer.start()

    def wait(self) -> None:
        """Block until a background save has landed; raise its error, if it failed."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def _write(self, state: dict[str, Any]) -> None:
        try:
            self.save(state)
        except BaseException as error:      # re-raised in the training thread by `wait`
            self._failure = error

    def save(self, state: dict[str, Any]) -> None:
        """Write `state` atomically, keeping the good state it replaces as `.prev` (first process only)."""
        if not distributed.is_main():
            return
        with io.atomic_path(self.path) as tmp:
            torch.save(state, tmp)
            if self._current_is_good and self.path.is_file():
                os.replace(self.path, self.previous)
        self._current_is_good = True

    def _read(self, path: Path) -> tuple[dict[str, Any], None] | tuple[None, str]:
        try:
            state = torch.load(path, map_location="cpu", weights_only=self.weights_only)
        except Exception as exc:   # a damaged pickle can raise nearly anything; all of it means "unreadable"
            return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}"
        if not isinstance(state, dict):
            return None, f"holds a {type(state).__name__}, not a resume state"
        missing = sorted(self.keys - state.keys())
        if missing:
            return None, f"not a resume state: no {', '.join(missing)}"
        return state, None

    def _set_aside(self, log: Log, reason: str) -> None:
        """Move the newest state to `.stale` and drop the other, so the next run starts clean."""
        newest = self.path if self.path.is_file() else self.previous
        if not newest.is_file():
            return
        if distributed.is_main():
            os.replace(newest, self.stale)
            self.previous.unlink(missing_ok=True)
        log(f"{newest}: {reason}; moved it to {self.stale}, starting from step 0")
