"""Export a discovered candidate as a standalone PyTorch source file (depending only on torch).

Each space writes its own file (``SearchSpace.export_source``): the loss space a
TaylorGLO ``nn.Module``, the hparams space ``HPARAMS`` and ``make_optimizer``, the
optimizer and backprop spaces their rules. A product space's file joins its parts'
files: one docstring, the imports once, then each part's definitions in order.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from .errors import UserError


def export_candidate(space_name: str, text: str) -> str:
    """The source of a standalone module reproducing candidate ``text`` of ``space_name``."""
    from .registry import get_space
    from .searchspaces.product import ProductSpace

    space = get_space(space_name)
    try:
        if isinstance(space, ProductSpace):
            return product_source(space, space.parse(text))
        return space.export_source(space.parse(text))
    except NotImplementedError as err:
        raise UserError(str(err)) from None


def product_source(space: Any, genome: tuple[Any, ...]) -> str:
    """One file holding every part's export; refuses parts that define the same name."""
    slots = {slot for part in space.parts for slot in part.slots}
    if "hparams" in slots and "optimizer" in slots:
        raise NotImplementedError(
            f"space {space.name!r}: its hparams feed the searched optimizer, so the hparams file's "
            "SGD make_optimizer would be wrong; export each part's run separately")
    imports: list[str] = []
    bodies: list[str] = []
    owner: dict[str, str] = {}
    for part, part_genome in zip(space.parts, genome):
        source = part.export_source(part_genome)
        doc, part_imports, body = _split(source)
        for name in _defined(source):
            if name in owner:
                raise NotImplementedError(
                    f"space {space.name!r}: parts {owner[name]!r} and {part.name!r} both define "
                    f"{name!r}; export each part separately")
            owner[name] = part.name
        imports += [line for line in part_imports if line not in imports]
        heading = f"# ---- {part.name}: {part.format(part_genome)}"
        notes = "".join(f"# {line}".rstrip() + "\n" for line in doc.splitlines())
        bodies.append(f"{heading}\n{notes}\n{body.strip()}\n")
    future = [line for line in imports if line.startswith("from __future__")]
    rest = [line for line in imports if line not in future]
    header = (f'"""A candidate of the product space {space.name!r} found by metalearn.\n\n'
              f"Genome: {space.format(genome)}\n"
              f'Each part below is what exporting that space alone writes.\n"""\n')
    return "\n".join([header, *future, *rest, "", "", *(b + "\n" for b in bodies)]).rstrip() + "\n"


def _split(source: str) -> tuple[str, list[str], str]:
    """A module's docstring, its top-level import lines, and the rest of its lines."""
    tree = ast.parse(source)
    lines = source.splitlines()
    drop: set[int] = set()
    doc = ast.get_docstring(tree) or ""
    first = tree.body[0] if tree.body else None
    if doc and isinstance(first, ast.Expr):
        drop.update(range(first.lineno - 1, first.end_lineno or first.lineno))
    imports = []
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            span = range(node.lineno - 1, node.end_lineno or node.lineno)
            imports.append("\n".join(lines[i] for i in span))
            drop.update(span)
    body = "\n".join(line for i, line in enumerate(lines) if i not in drop)
    return doc, imports, body


def _defined(source: str) -> set[str]:
    """Names a module defines at its top level (functions, classes, assignments)."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def export_run(run: str | Path, output: str | Path, rank: int = 1) -> Path:
    """Write the ``rank``-th best candidate of ``run`` to ``output``."""
    from .run import load_run

    best = load_run(run).best(k=rank)
    if len(best) < rank:
        raise UserError(f"run {run} has {len(best)} successful evaluation(s); cannot export rank {rank}")
    row = best.iloc[rank - 1]
    path = Path(output)
    path.write_text(export_candidate(row["space"], row["candidate"]))
    return path
