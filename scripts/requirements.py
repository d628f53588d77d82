"""Print the requirements of lmforge's core plus the named extras, one per line, from pyproject.toml.

Why: the images install the dependencies in a layer of their own, before the project's source is
copied in, so a code change rebuilds only the last, small layer. Standard library only (it runs
on the bare base image).

    python3 scripts/requirements.py pyproject.toml trainer serve
"""

import sys
import tomllib


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: requirements.py PYPROJECT [EXTRA...]", file=sys.stderr)
        return 2
    with open(argv[1], "rb") as f:
        project = tomllib.load(f)["project"]
    extras = project.get("optional-dependencies", {})
    unknown = [e for e in argv[2:] if e not in extras]
    if unknown:
        print(f"requirements.py: unknown extras {unknown}; known: {sorted(extras)}", file=sys.stderr)
        return 2
    lines = list(project.get("dependencies", []))
    for extra in argv[2:]:
        lines += extras[extra]
    print("\n".join(dict.fromkeys(lines)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
