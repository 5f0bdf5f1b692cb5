"""The package follows the data flow: a stage imports only the shared modules and the
stages before it. Every import counts, also those inside functions (heavy imports live
there), so a reader walking from ``ramo ingest`` to ``POST /v1/score`` never goes back."""

from __future__ import annotations

import ast
from pathlib import Path

import ramo_stream

PACKAGE = Path(ramo_stream.__file__).parent

# Imported by anyone; they import no stage.
SHARED = ("config", "schemas", "core", "local_models")
# In data-flow order. ``client`` is the reward service's Python client: after serve,
# used by eval and the command line.
STAGES = ("stream", "label", "registry", "train", "serve", "client", "eval", "cli")


def _part(module: str) -> str:
    """The top-level part of ``ramo_stream`` a dotted module name lies in ('' for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every ramo_stream import in the file, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("ramo_stream")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "ramo_stream":  # from ramo_stream import x: x is a module
                found += [(node.lineno, f"ramo_stream.{a.name}") for a in node.names]
            elif node.module.startswith("ramo_stream."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "<relative>"))
    return found


def _modules() -> list[tuple[Path, str]]:
    return [
        (p, _part("ramo_stream." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)))
        for p in sorted(PACKAGE.rglob("*.py"))
    ]


def test_every_module_is_in_a_stage_or_shared() -> None:
    loose = [
        str(p.relative_to(PACKAGE))
        for p, part in _modules()
        if part not in SHARED + STAGES and p.name != "__init__.py"
    ]
    assert not loose, f"modules outside the stage folders and the shared modules: {loose}"


def test_no_stage_imports_a_later_stage() -> None:
    rank = {stage: i for i, stage in enumerate(STAGES)}
    wrong: list[str] = []
    for path, part in _modules():
        for line, module in _imports(path):
            where = f"{path.relative_to(PACKAGE)}:{line} imports {module}"
            if module == "<relative>":
                wrong.append(f"{where} (use absolute imports)")
                continue
            target = _part(module)
            if target in ("", *SHARED) and part not in SHARED:
                continue
            if part in SHARED:
                # core, config, schemas and local_models stand below every stage.
                if target in STAGES:
                    wrong.append(f"{where}: a shared module imports a stage")
            elif target not in rank:
                wrong.append(f"{where}: not a stage nor a shared module")
            elif rank[target] > rank[part]:
                wrong.append(f"{where}: {part} comes before {target} in the data flow")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_backward_import(tmp_path: Path) -> None:
    """The walk finds imports inside functions, where the heavy ones are."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from ramo_stream.serve.reward_app import build_app\n")
    assert _imports(f) == [(2, "ramo_stream.serve.reward_app")]


# kafka-python stays behind the protocols of stream/clients.py: the stages see a Consumer
# and a Producer, and only these modules build or inspect the real clients.
KAFKA_MODULES = {"stream/clients.py", "stream/kafka_io.py", "stream/health.py", "stream/broker.py"}


def test_only_the_stream_client_modules_import_kafka() -> None:
    wrong = []
    for path, _ in _modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            rel = str(path.relative_to(PACKAGE))
            if any(n == "kafka" or n.startswith("kafka.") for n in names) and (
                rel not in KAFKA_MODULES
            ):
                wrong.append(f"{rel}:{node.lineno}")
    assert not wrong, f"kafka-python imported outside {sorted(KAFKA_MODULES)}: {wrong}"
