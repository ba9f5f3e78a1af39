"""Print the requirements of pyproject.toml's core dependencies plus the named extras, one a line.

Used by the Dockerfiles to install dependencies in a layer of their own, before the source is copied:
    python pyproject_requirements.py worker,training > requirements.txt
Only the standard library is used (the base image has nothing else yet).
"""

import re
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """Return the core dependencies and those of ``extras``, following ``name[extra]`` self-references."""
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    self_ref = re.compile(rf"^{re.escape(project['name'])}\[(?P<extras>[^\]]+)\]$")
    wanted, seen, out = list(extras), set(), list(project.get("dependencies", []))
    while wanted:
        extra = wanted.pop(0)
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r} (it has: {', '.join(sorted(optional))})")
        for req in optional[extra]:
            match = self_ref.match(req.replace(" ", ""))
            if match:
                wanted.extend(e.strip() for e in match["extras"].split(","))
            elif req not in out:
                out.append(req)
    return out


def main(argv: list[str]) -> int:
    extras = [e.strip() for arg in argv for e in arg.split(",") if e.strip()]
    path = Path("pyproject.toml")
    print("\n".join(requirements(tomllib.loads(path.read_text()), extras)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
