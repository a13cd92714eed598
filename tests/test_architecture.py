"""The dependency rules of the layout, checked on the import graph: no stage imports another
stage, and only evaluation and the simulated crowdworker read the judge (the crowdworker only
through stage ``human_feedback``, the "human" labels)."""

import ast
import pathlib

import pytest

CAI = pathlib.Path(__file__).resolve().parents[1] / "cai"
STAGES = sorted(p.stem for p in (CAI / "stages").glob("*.py") if p.stem != "__init__")
JUDGE_READERS = {"cai.evaluation", "cai.toyworld.crowdworker"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(CAI.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path) -> set[str]:
    """Every module ``path`` imports (``from a import b`` counts as ``a`` and ``a.b``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


MODULES = {module_name(p): imports(p) for p in CAI.rglob("*.py")}


def test_the_stages_are_there():
    assert {"pretrain", "sl_cai", "pairs", "feedback", "human_feedback", "preference_model",
            "evaluate"} <= set(STAGES)  # fmt: skip


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_another_stage(stage):
    others = {f"cai.stages.{s}" for s in STAGES if s != stage}
    assert not MODULES[f"cai.stages.{stage}"] & others


def test_only_evaluation_reads_the_judge():
    readers = {m for m, deps in MODULES.items() if "cai.toyworld.judge" in deps}
    assert readers and readers <= JUDGE_READERS, readers - JUDGE_READERS
    # ... and no CAI stage reaches it through evaluation either.
    cai_stages = {f"cai.stages.{s}" for s in STAGES if s != "evaluate"}
    assert not {m for m in cai_stages if "cai.evaluation" in MODULES[m]}


def test_only_the_human_feedback_stage_asks_the_crowdworker():
    """AI feedback, the preference model and every other CAI stage see no ground truth: the
    crowdworker's labels reach them only as files of stage ``human_feedback``."""
    askers = {m for m, deps in MODULES.items() if "cai.toyworld.crowdworker" in deps}
    assert askers <= {"cai.stages.human_feedback"}, askers


def test_library_modules_do_not_import_stages():
    """Dependencies point one way: the library never imports a stage (main and the presets
    that assemble configs from the stages' defaults are the top)."""
    tops = {"cai.main", "cai.presets"}
    for name, deps in MODULES.items():
        if name.startswith("cai.stages") or name in tops:
            continue
        assert not any(d.startswith("cai.stages") for d in deps), name
