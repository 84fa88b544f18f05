"""Prove that a normal install holds the same ``taskstream.*`` tree as the source mapping.

    python scripts/package_tree.py TARGET_DIR

installs the project (a normal, non-editable install without dependencies) into
TARGET_DIR with pip, then compares the modules and data files found there with
what pyproject.toml's ``packages`` / ``package-dir`` mapping promises from the
source folders. Exit 0 and print the module count when they match (CI then runs
mypy over TARGET_DIR, the same tree); exit 1 listing the differences otherwise.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: package data: the Avro contract, py.typed, and the web dashboard's files (api/ui/)
DATA_SUFFIXES = {".avsc", ".json", ".typed", ".html", ".js", ".css", ".svg"}


def source_tree() -> set[str]:
    """Relative paths (under taskstream/) the mapping should install."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = config["package-dir"]
    expected: set[str] = set()
    for package in config["packages"]:
        # a package not in the mapping lives under its parent's mapped folder
        head, rest = package, ""
        while head not in mapping:
            head, _, last = head.rpartition(".")
            rest = f"{last}/{rest}" if rest else last
        folder = ROOT / mapping[head] / rest
        dest = "/".join(package.split(".")[1:])
        for path in folder.iterdir():
            if path.suffix == ".py" or path.suffix in DATA_SUFFIXES:
                expected.add(f"{dest}/{path.name}".lstrip("/"))
        for path in folder.rglob("*"):  # package data in sub-folders (schemas/avro/v1/...)
            if path.is_file() and path.suffix in DATA_SUFFIXES - {".typed"} and \
                    not (path.parent / "__init__.py").exists():
                expected.add(f"{dest}/{path.relative_to(folder)}".lstrip("/"))
    return expected


def installed_tree(target: Path) -> set[str]:
    base = target / "taskstream"
    return {
        str(p.relative_to(base)) for p in base.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
        and (p.suffix == ".py" or p.suffix in DATA_SUFFIXES)
    }


def install(target: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade",
         "--target", str(target), str(ROOT)],
        check=True, timeout=600,
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    target = Path(argv[0]).resolve()
    install(target)
    expected, found = source_tree(), installed_tree(target)
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing or extra:
        print(f"installed tree differs from the source mapping:\n  missing: {missing}\n"
              f"  unexpected: {extra}", file=sys.stderr)
        return 1
    modules = sum(1 for p in found if p.endswith(".py"))
    print(f"installed tree matches the source mapping: {modules} modules, "
          f"{len(found) - modules} data files in {target / 'taskstream'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
