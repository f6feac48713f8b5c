"""The layers of src, read from the source with `ast` (imports inside functions count too): the core that
the README steps run through never reaches the presentation, the hub client, the checks or the data
sources, and no import circle exists among the src modules or among the bench modules."""

import ast

import pytest

from helpers import REPO

CORE = {"errors", "config", "family", "prompts", "images", "modeling", "inference", "evaluation", "vqa_eval",
        "training", "files", "samples"}
OUTSIDE_CORE = {"compare", "charts", "formatting", "i18n", "report", "demo_app",  # the presentation
                "hub_data",  # the hub client
                "preflight",  # the checks
                "data"}  # the data sources, which may use the hub client


def imports_of(package: str) -> dict[str, set[str]]:
    """{module: the modules of `package` it imports anywhere in its file} for every module of the package."""
    modules = {p.stem for p in (REPO / package).glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name in modules:
        found = set()
        for node in ast.walk(ast.parse((REPO / package / f"{name}.py").read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith(f"{package}.")}
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0 and node.module and node.module.split(".")[0] != package:
                    continue  # another package or a library
                inner = (node.module or "").split(".")[1 if node.level == 0 else 0:]
                if inner and inner[0]:
                    found.add(inner[0])  # from .x import y / from src.x import y
                else:
                    found |= {a.name for a in node.names}  # from . import x / from src import x
        graph[name] = found & modules
    return graph


def reached(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_core_never_reaches_the_presentation_the_hub_client_the_checks_or_the_data_sources():
    graph = imports_of("src")
    assert CORE <= set(graph), CORE - set(graph)
    for module in sorted(CORE):
        assert not graph[module] & OUTSIDE_CORE, (module, graph[module] & OUTSIDE_CORE)  # directly
        assert not reached(graph, module) & OUTSIDE_CORE, (module, reached(graph, module) & OUTSIDE_CORE)


@pytest.mark.parametrize("package", ["src", "bench"])
def test_no_import_circle(package):
    graph = imports_of(package)
    circles = sorted(module for module in graph if module in reached(graph, module))
    assert not circles, {m: sorted(graph[m]) for m in circles}


def test_the_reader_finds_function_level_and_package_imports():
    graph = imports_of("src")
    assert "prompts" in graph["family"]  # `from .prompts import ...` inside resolve()
    assert "inference" in graph["evaluation"]  # `from .inference import ...` inside a function
    assert "prompts" in graph["preflight"]  # `from . import prompts` inside check_value
