"""The layout keeps host knowledge in one place: only ``adapters/`` and ``models/`` name a host's parts.

Everything else reaches a host through its adapter (``wrapper.host``), so a new host family is one
adapter file and no module elsewhere has to change. The rule, checked on the syntax tree:

* no attribute, variable, argument or keyword named after a host part (``x.visual``,
  ``token_embedding=``);
* no string that is such a name (``getattr(m, "visual")``) or holds it inside a dotted path
  (``"token_embedding.weight"``, ``"module.visual.VPT"``): checkpoint key names are layout knowledge;
* docstrings and comments are prose and may mention the parts; so may plain-English words in
  messages ("transformer blocks"), which are not dotted paths.

Two more rules keep the layout readable: no module over :data:`MAX_LINES` lines (one readable
file per idea; ``models/xclip.py``, a port of the reference model, is the one exception), and no
``print`` outside the command line's layer (``cli.py`` and ``commands/``): the library returns data
and logs, so that an application decides what reaches its users.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "promptcouple"
ALLOWED = ("adapters", "models")

MAX_LINES = 500
LONG_ALLOWED = {"promptcouple/models/xclip.py"}  # the X-CLIP port, kept close to the reference's layout
CLI_LAYER = ("promptcouple/cli.py", "promptcouple/commands/")
# wrapper.print_trainable_parameters prints its summary as peft's method of that name does.
PRINTING_FUNCTIONS = {"print_trainable_parameters"}

# Attribute names of CLIP-style hosts (OpenAI / open_clip layout, Hugging Face, timm, ViFi-CLIP).
HOST_PARTS = {
    "token_embedding", "positional_embedding", "class_embedding", "text_projection", "transformer", "resblocks",
    "ln_pre", "ln_post", "ln_final", "conv1", "visual", "attn_mask", "image_encoder", "text_encoder",
    "vision_model", "text_model", "patch_embed", "trunk", "set_grad_checkpointing",
}
_DOTTED = re.compile(r"[A-Za-z0-9_.{}*]+")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


def _string_hits(text: str) -> list[str]:
    if text in HOST_PARTS:
        return [text]
    hits = []
    for piece in _DOTTED.findall(text):
        if "." in piece:
            hits += [part for part in piece.split(".") if part in HOST_PARTS]
    return hits


def host_part_uses(path: Path) -> list[tuple[int, str]]:
    """``(line, name)`` of every place ``path`` names a host part, by the rule above."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.keyword) and node.arg:
            names = [node.arg]
        elif isinstance(node, ast.arg):
            names = [node.arg]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            names = _string_hits(node.value)
        found += [(node.lineno, n) for n in names if n in HOST_PARTS]
    return sorted(set(found))


def test_only_adapters_and_models_name_host_parts():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in ALLOWED:
            continue
        offenders += [f"promptcouple/{relative}:{line}: {name}" for line, name in host_part_uses(path)]
    assert not offenders, (
        "host attribute names outside adapters/ and models/ (reach the host through its adapter, "
        "wrapper.host, or move the layout knowledge into adapters/):\n  " + "\n  ".join(offenders))


def test_the_rule_sees_code_and_keys_but_not_prose(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""The visual tower, token_embedding and transformer blocks (prose)."""\n'
                      "size = model.visual.image_size\n"
                      "key = 'module.token_embedding.weight'\n"
                      "tower = getattr(model, 'resblocks')\n"
                      "message = 'needs transformer blocks'  # ln_pre in a comment\n")
    assert host_part_uses(sample) == [(2, "visual"), (3, "token_embedding"), (4, "resblocks")]


def test_architecture_doc_names_only_paths_that_exist():
    """docs/ARCHITECTURE.md is a map: every path it writes in backticks, and every room of its
    tree, must be there."""
    root = PACKAGE.parent
    text = (root / "docs" / "ARCHITECTURE.md").read_text()
    named = {m for m in re.findall(r"`([\w./-]+)`", text) if "/" in m}
    tree = text.split("```")[1]
    stack: list[tuple[int, str]] = []
    for line in tree.splitlines():
        entry = line.split()[0] if line.strip() else ""
        if not re.fullmatch(r"[\w.-]+/?", entry):
            continue
        depth = len(line) - len(line.lstrip())
        stack = [(d, p) for d, p in stack if d < depth]
        path = "/".join([p.rstrip("/") for _, p in stack] + [entry])
        named.add(path)
        if entry.endswith("/"):
            stack.append((depth, entry))
    missing = sorted(p for p in named if not (root / p.rstrip("/")).exists())
    assert len(named) > 40 and not missing, f"docs/ARCHITECTURE.md names paths that do not exist: {missing}"


# ----------------------------------------------------------------------- module size and printing

def _modules(*folders: str) -> list[Path]:
    root = PACKAGE.parent
    return sorted(p for folder in folders for p in (root / folder).rglob("*.py"))


def long_modules(paths: list[Path], limit: int = MAX_LINES) -> list[str]:
    """``"path: N lines"`` of every module over ``limit`` lines, exceptions aside."""
    root = PACKAGE.parent
    out = []
    for path in paths:
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        lines = len(path.read_text().splitlines())
        if lines > limit and name not in LONG_ALLOWED:
            out.append(f"{name}: {lines} lines")
    return out


def print_calls(path: Path) -> list[int]:
    """Lines of ``print(...)`` calls in ``path``, except inside :data:`PRINTING_FUNCTIONS`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[int] = []

    def visit(node: ast.AST, allowed: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            allowed = allowed or node.name in PRINTING_FUNCTIONS
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print" \
                and not allowed:
            found.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, allowed)

    visit(tree, False)
    return sorted(found)


def test_no_module_is_over_500_lines():
    offenders = long_modules(_modules("promptcouple", "benchmarks"))
    assert not offenders, (f"modules over {MAX_LINES} lines (split each along a seam a reader would name, "
                           "re-exporting the names others import):\n  " + "\n  ".join(offenders))


def test_only_the_command_line_prints():
    offenders = []
    for path in _modules("promptcouple"):
        name = path.relative_to(PACKAGE.parent).as_posix()
        if name.startswith(CLI_LAYER):
            continue
        offenders += [f"{name}:{line}" for line in print_calls(path)]
    assert not offenders, ("print outside the command line (return the text, or log it; a command's body "
                           "goes in promptcouple/commands/):\n  " + "\n  ".join(offenders))


def test_the_size_and_print_rules_see_what_they_should(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""print(x) in a docstring is prose."""\n'
                      "import logging\n"
                      "print('a')\n"
                      "def print_trainable_parameters(self):\n"
                      "    print('as peft does')\n"
                      "def report(x):\n"
                      "    logging.info(x)\n"
                      "    builtins_print = print\n"
                      "    return [print(y) for y in x]\n")
    assert print_calls(sample) == [3, 9]
    assert long_modules([sample], limit=9) == [] and long_modules([sample], limit=8) == [f"{sample}: 9 lines"]

