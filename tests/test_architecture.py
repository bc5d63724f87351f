"""The layout keeps host knowledge in one place: only ``adapters/`` and ``models/`` name a host's parts.

Everything else reaches a host through its adapter (``wrapper.host``), so a new host family is one
adapter file and no module elsewhere has to change. The rule, checked on the syntax tree:

* no attribute, variable, argument or keyword named after a host part (``x.visual``,
  ``token_embedding=``);
* no string that is such a name (``getattr(m, "visual")``) or holds it inside a dotted path
  (``"token_embedding.weight"``, ``"module.visual.VPT"``): checkpoint key names are layout knowledge;
* docstrings and comments are prose and may mention the parts; so may plain-English words in
  messages ("transformer blocks"), which are not dotted paths.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "promptcouple"
ALLOWED = ("adapters", "models")

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
