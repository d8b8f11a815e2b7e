"""Which source files each CLI stage really runs: its code dependencies for DVC and Snakemake.

A stage's code is the import closure of `python -m genrobust <stage>`: the CLI module, what
it imports for every stage, and the module its stage function imports lazily, with everything
those import in turn. It is measured, not guessed: a fresh interpreter imports exactly that
and lists the genrobust modules it loaded. dvc.yaml lists these files as each stage's
dependencies (tests/test_code_deps.py fails when a list is stale and prints the right one);
the Snakemake rules read the same lists from dvc.yaml, so both tools rerun exactly the stages
a code change touches.

    python -m genrobust.code_deps adv_train      # the files, as dvc.yaml lists them
    python -m genrobust.code_deps --write dvc.yaml   # rewrite every stage's src/ deps (make code-deps)
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent.parent          # the repository: dvc.yaml's src/ paths are relative to it
ALWAYS = ("genrobust.__main__", "genrobust.distributed")   # main() imports distributed for every stage
SCHEMAS = {"config.py": ("params.schema.yaml",),   # the data they read
           "evaluation/result_schema.py": ("result.schema.yaml", "certified.schema.yaml")}


def entry_modules(stage: str) -> list[str]:
    """The modules a stage's function imports when it runs (the CLI imports them lazily, inside it)."""
    from .__main__ import STAGES
    if stage not in STAGES:
        raise KeyError(f"no CLI stage {stage!r}; expected one of {', '.join(STAGES)}")
    tree = ast.parse(textwrap.dedent(inspect.getsource(STAGES[stage][2])))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.append(f"genrobust.{node.module}")
            else:
                found += [f"genrobust.{alias.name}" for alias in node.names]
    return found


def closure(stage: str) -> list[str]:
    """Source files (as `src/genrobust/...` paths) a fresh interpreter loads to run the stage."""
    modules = [*ALWAYS, *entry_modules(stage)]
    probe = ("import importlib, json, sys\n"
             f"for name in {modules!r}:\n    importlib.import_module(name)\n"
             "print(json.dumps(sorted(m.__file__ for n, m in list(sys.modules.items())\n"
             "    if n.split('.')[0] == 'genrobust' and getattr(m, '__file__', None))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    files = {Path(path).resolve() for path in json.loads(done.stdout)}
    files |= {PACKAGE / "schemas" / name for module, names in SCHEMAS.items() if PACKAGE / module in files
              for name in names}
    return sorted(f"src/{path.relative_to(PACKAGE.parent).as_posix()}" for path in files)


def compact(files: list[str]) -> list[str]:
    """The same files with every package folder all of whose files are listed given as the folder."""
    chosen = set(files)
    for folder in sorted({str(Path(f).parent) for f in files if Path(f).parent != Path("src/genrobust")}):
        members = expand([folder], ROOT)
        if members <= chosen:
            chosen = (chosen - members) | {folder}
    return sorted(chosen)


def expand(deps: list[str], root: Path) -> set[str]:
    """dvc.yaml's code dependencies as files (a folder stands for its .py and .yaml files)."""
    files = set()
    for dep in deps:
        path = root / dep
        files |= {p.relative_to(root).as_posix() for p in path.iterdir() if p.is_file() and p.suffix in (".py", ".yaml")} \
            if path.is_dir() else {dep}
    return files


def listed(dvc_path: Path) -> dict[str, list[str]]:
    """CLI stage -> the src/ dependencies dvc.yaml lists for it; every DVC stage running that CLI stage must agree."""
    found: dict[str, list[str]] = {}
    for name, stage in yaml.safe_load(Path(dvc_path).read_text())["stages"].items():
        body = stage.get("do", stage)
        cli = re.search(r"python -m genrobust (\w+)", body["cmd"]).group(1)
        deps = sorted(dep for dep in body["deps"] if dep.startswith("src/"))
        if found.setdefault(cli, deps) != deps:
            raise ValueError(f"{dvc_path}: stage {name} lists other src/ deps than another {cli} stage; "
                             "run make code-deps")
    return found


def write_dvc(path: Path) -> None:
    """Replace the src/ entries of every stage's deps in dvc.yaml by its closure, keeping the rest of the text."""
    lines = path.read_text().splitlines()
    stages = sorted({m.group(1) for line in lines if (m := re.search(r"python -m genrobust (\w+)", line))})
    with ThreadPoolExecutor(2) as pool:
        closures = dict(zip(stages, pool.map(lambda stage: compact(closure(stage)), stages)))
    out: list[str] = []
    stage, indent, in_deps = None, "", False
    for line in [*lines, ""]:
        stripped = line.strip()
        if in_deps and not stripped.startswith("- "):
            out += [f"{indent}- {name}" for name in closures[stage]]
            in_deps = False
        if in_deps:
            indent = line[:len(line) - len(line.lstrip())]
            if not stripped.startswith("- src/genrobust"):
                out.append(line)
            continue
        if found := re.search(r"python -m genrobust (\w+)", line):
            stage = found.group(1)
        in_deps = stripped == "deps:" and stage is not None
        out.append(line)
    path.write_text("\n".join(out[:-1]) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        write_dvc(Path(sys.argv[2]))
    else:
        for stage_name in sys.argv[1:] or sorted(__import__("genrobust.__main__", fromlist=["STAGES"]).STAGES):
            print(f"{stage_name}:", *compact(closure(stage_name)), sep="\n  - ")
