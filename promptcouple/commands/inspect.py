"""``promptcouple inspect FILE``: config, tensor shapes, metadata and run information of a prompt file."""

from __future__ import annotations

from typing import Optional

from promptcouple.commands import command_parser


def describe(path: str, pf) -> list[str]:
    """The lines ``inspect`` shows for the :class:`~promptcouple.io.PromptFile` ``pf`` read from ``path``."""
    from promptcouple.io import RUN_INFO_KEYS, run_info_of

    lines = [f"{path}: {pf.config}"]
    lines += [f"  {key:<18} {tuple(pf.tensors[key].shape)}" for key in sorted(pf.tensors)]
    lines += [f"  [{key}] {value}" for key, value in sorted(pf.metadata.items())
              if key != "config" and key not in RUN_INFO_KEYS]
    info = run_info_of(pf.metadata)
    if not info:
        lines.append("  (no run information: class names and backbone are not recorded; "
                     "files written by `promptcouple train` carry them)")
    for key, value in info.items():
        if key == "classnames":
            value = f"{len(value)}: {', '.join(value)}"
        elif key == "eval_classnames":
            value = "; ".join(f"{name} ({len(names)}): {', '.join(names)}" for name, names in value.items())
        elif key == "descriptions":  # what the prompts were trained and evaluated with, per class
            value = (f"{len(value)} classes, {sum(len(d) for d in value.values())} descriptions: "
                     + "; ".join(f"{name}: {' | '.join(d)}" for name, d in value.items()))
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items() if v is not None)
        lines.append(f"  [{key}] {value}")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    """Show the config, tensor shapes and metadata of a prompt file."""
    parser = command_parser("inspect", main.__doc__)
    parser.add_argument("file")
    args = parser.parse_args(argv)
    from promptcouple.io import read_prompt_file

    print("\n".join(describe(args.file, read_prompt_file(args.file))))
    return 0
