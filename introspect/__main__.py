"""``python -m introspect {train,evaluate,compare,scores,explain,explain-eval,explain-network}``;
``python -m introspect --completion bash|zsh`` prints a shell completion script."""

from __future__ import annotations

import sys

COMMANDS = {
    "train": "train a run (or a sweep with -m); same as train.py",
    "evaluate": "re-evaluate a finished run (run=DIR ...); same as evaluate.py",
    "compare": "one table across runs; same as evaluate.py compare",
    "scores": "OOD detection and trust of a run; same as evaluate.py scores",
    "explain": "explanation figures of a run; same as evaluate.py explain",
    "explain-eval": "faithfulness of the explanation methods; evaluate.py explain-eval",
    "explain-network": "network-inspection figures; evaluate.py explain-network",
}


def main(argv: list[str]) -> int:
    """Dispatch ``argv[0]`` to the train or evaluate command."""
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, COMMANDS))
        listing = "\n".join(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items())
        print(
            "usage: python -m introspect COMMAND [args]; COMMAND --help for more\n"
            f"       python -m introspect --completion bash|zsh  (shell completion)\n{listing}"
        )
        return 0 if argv else 2
    if argv[0] == "--completion":
        from introspect.cli.completion import SHELLS, completion_script

        if len(argv) != 2 or argv[1] not in SHELLS:
            print(
                f"error: give the shell: python -m introspect --completion {'|'.join(SHELLS)}",
                file=sys.stderr,
            )
            return 2
        print(completion_script(argv[1], list(COMMANDS)), end="")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if command == "train":
        from introspect.cli.train import main as train

        return train(rest)
    from introspect.cli.evaluate import main as evaluate

    return evaluate(rest if command == "evaluate" else [command, *rest])


def entry() -> None:
    """Console script ``introspect``."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    entry()
