"""Print `name==version` for the installed dependency closure of some distributions (for device_prepare.sh).

Environment markers are evaluated for CPython 3.12 on Linux x86-64 (the GPU machine), extras of a requirement
(`fsspec[http]`) are followed, and the names after --skip (with their own dependencies) are left out.

    .venv/bin/python scripts/device_closure.py --skip torch numpy -- hydra-core diffusers
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import re

from packaging.requirements import Requirement

TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str], skip: set[str]) -> dict[str, str]:
    """name -> installed version for roots and everything they require (with extras) on the target."""
    pins: dict[str, str] = {}
    todo = [(name, "") for name in roots]
    done: set[tuple[str, str]] = set()
    while todo:
        name, extra = todo.pop()
        key = canonical(name)
        if key in skip or key.startswith("nvidia-") or (key, extra) in done:
            continue
        done.add((key, extra))
        dist = md.distribution(name)            # PackageNotFoundError: install it in .venv first
        pins[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker and not req.marker.evaluate({**TARGET, "extra": extra}):
                continue
            todo += [(req.name, "")] + [(req.name, e) for e in req.extras]
    return pins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", nargs="*", default=[])
    parser.add_argument("roots", nargs="+")
    args = parser.parse_args()
    for key, version in sorted(closure(args.roots, {canonical(s) for s in args.skip}).items()):
        print(f"{key}=={version}")


if __name__ == "__main__":
    main()
