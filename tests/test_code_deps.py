"""dvc.yaml's code dependencies are each stage's real import closure (and Snakemake reads the same lists)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from genrobust import code_deps

from .conftest import ROOT


def test_every_stage_lists_exactly_the_modules_it_imports() -> None:
    stages = code_deps.listed(ROOT / "dvc.yaml")
    with ThreadPoolExecutor(2) as pool:
        closures = dict(zip(stages, pool.map(code_deps.closure, stages)))
    for cli, listed in stages.items():
        right = code_deps.compact(closures[cli])
        assert code_deps.expand(listed, ROOT) == set(closures[cli]), \
            f"dvc.yaml: the {cli} stage's src/ deps are stale; `make code-deps` writes them:\n" + \
            "\n".join(f"      - {f}" for f in right)


def test_the_closure_follows_lazy_imports_and_misses_nothing_a_stage_runs() -> None:
    """evaluate runs PGD (attacks/pgd.py), the models and io: the hand-written list once missed them."""
    files = set(code_deps.closure("evaluate"))
    assert {"src/genrobust/attacks/pgd.py", "src/genrobust/models/wideresnet.py", "src/genrobust/io.py",
            "src/genrobust/evaluation/autoattack.py", "src/genrobust/schemas/result.schema.yaml"} <= files
    assert not any(f.startswith("src/genrobust/diffusion/") for f in files)
    assert code_deps.entry_modules("adv_train") == ["genrobust.training.adversarial", "genrobust.training.mixed"]
