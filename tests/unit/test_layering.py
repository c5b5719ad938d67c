"""The package's layering, checked on the source: cli -> tasks -> workflows -> engines -> library -> base.

A module may import modules of its own layer or below, never above; the import graph has no cycles; no task
module imports another task module (the pipeline runs stages through ``transferdet.tasks.run_task``, the
task table); and function-local imports are left to heavy third-party packages, never the project's own
modules (a local import of our own code is how a cycle hides).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import transferdet

ROOT = Path(transferdet.__file__).parent
# top-level package or module of transferdet -> layer (0 = top)
LAYERS = [
    {"cli", "__main__"},
    {"tasks"},
    {"pipeline", "bench"},
    {"training", "inference", "export", "pruning", "callbacks"},
    {"data", "detector", "models", "losses", "postprocess", "evaluation", "visualize"},
    {"config", "utils", "structures", "errors", "boxes", "__init__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py")) if p.parts[-2] != "conf"}


def imports(path: Path, name: str) -> list[tuple[str, int, bool]]:
    """(imported transferdet module, line, whether at module level) of one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(n) for n in tree.body}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = modules()
    out = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            # "from transferdet.detector import checkpoint" imports the module transferdet.detector.checkpoint
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            if t == "transferdet" or t.startswith("transferdet."):
                out.append((t, node.lineno, id(node) in top_level or _in_type_checking(tree, node)))
    return out


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test) and node in ast.walk(n) for n in tree.body
    )


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYER[parts[1] if len(parts) > 1 else "__init__"]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {t for t, _, _ in imports(p, m) if t in known and t != m} for m, p in known.items()}


def test_every_package_has_a_layer():
    tops = {m.split(".")[1] for m in modules() if "." in m}
    assert tops <= set(LAYER), f"give these a layer in LAYERS: {sorted(tops - set(LAYER))}"


def test_no_module_imports_a_higher_layer():
    bad = []
    for m, path in modules().items():
        for target, line, _ in imports(path, m):
            if target in modules() and layer_of(target) < layer_of(m):
                bad.append(
                    f"{path.relative_to(ROOT)}:{line}: {m} (layer {layer_of(m)}) imports {target} "
                    f"(layer {layer_of(target)})"
                )
    assert not bad, "\n".join(bad)


def test_no_task_module_imports_another():
    bad = []
    for m, path in modules().items():
        if m.startswith("transferdet.tasks."):
            bad += [
                f"{path.relative_to(ROOT)}:{line}: imports {t}"
                for t, line, _ in imports(path, m)
                if t.startswith("transferdet.tasks.") and t != m
            ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in g:
        if v not in index:
            connect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_function_local_imports_of_the_project():
    bad = [
        f"{path.relative_to(ROOT)}:{line}: {t}"
        for m, path in modules().items()
        for t, line, top in imports(path, m)
        if not top
    ]
    assert not bad, "import these at the top of the module:\n" + "\n".join(bad)


def test_the_check_sees_a_violation(tmp_path):
    """The checks above read real imports: an upward and a function-local import are both found."""
    probe = ROOT / "utils" / "_layering_probe.py"
    probe.write_text("from transferdet.tasks import TASKS\n\n\ndef f():\n    from transferdet.cli import main\n")
    try:
        found = imports(probe, "transferdet.utils._layering_probe")
    finally:
        probe.unlink()
    assert ("transferdet.tasks", 1, True) in found and ("transferdet.cli", 5, False) in found


def test_every_task_run_is_a_short_composition():
    long = []
    for m, path in modules().items():
        if m.startswith("transferdet.tasks."):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            run = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run")
            if run.end_lineno - run.lineno + 1 > 40:
                long.append(f"{path.relative_to(ROOT)}: run is {run.end_lineno - run.lineno + 1} lines")
    assert not long, "\n".join(long)


def test_the_dataset_tasks_import_no_deep_learning_library():
    """``synth`` and ``convert`` touch no model: a fresh interpreter that imports them has no torch (5 s of a
    command's start on a 2-core CPU), and neither has one that imports the CLI (``transferdet --help``)."""
    heavy = ("torch", "torchvision", "pytorch_lightning", "onnx", "onnxruntime", "sklearn", "matplotlib")
    code = (
        "import sys, transferdet.cli, transferdet.tasks.synth, transferdet.tasks.convert; "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"imported: {out}"


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["infer", "checkpoint=missing.ckpt", "input=."], "'checkpoint'"),
        (["infer", "checkpoint=missing.ckpt", "input=nowhere"], "'input'"),
        (["evaluate", "checkpoint=missing.onnx", "runtime=onnxruntime"], "'checkpoint'"),
        (["train", "model.pretrained_model_file=missing.pth"], "'model.pretrained_model_file'"),
        (["train", "training.distillation.teacher=missing.ckpt"], "'training.distillation.teacher'"),
        (["train", "dataset.root=nowhere"], "dataset root does not exist"),
        (["prune", "checkpoint=missing.ckpt"], "'checkpoint'"),
        (["benchmark", "benchmark.models={a: missing.ckpt}"], "'benchmark.models.a'"),
        (["evaluate", "predictions=nowhere", "labels=."], "'predictions'"),
        (["calibrate", "dataset.root=nowhere"], "dataset root does not exist"),
    ],
)
def test_a_missing_input_file_is_reported_before_the_task_loads_torch(tmp_path, args, key):
    """A mistyped path answers in about a second: the input files are checked before a task imports its
    libraries (5 to 10 s of PyTorch and Lightning on a 2-core CPU)."""
    argv = ["transferdet", *args, f"hydra.run.dir={tmp_path / 'run'}"]
    code = (
        "import runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n    runpy.run_module('transferdet', run_name='__main__')\n"
        "except SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.stdout.strip().splitlines()[-1] == "exit 2 False", r.stdout + r.stderr
    assert f"transferdet {args[0]}: error:" in r.stderr and key in r.stderr, r.stderr
