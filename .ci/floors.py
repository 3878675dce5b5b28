"""Print pip constraints that pin each run-time dependency of augpipe (and the test runner) to
its lowest allowed version: ``name==floor`` for every ``name>=floor`` or ``name~=floor`` in
pyproject.toml. torch and torchvision are left out: see .ci/floors.sh."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

SKIP = {"torch", "torchvision"}
project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
# the run-time dependencies, and the test runner's (the dev extra's tools are resolved as usual)
TEST = {"pytest", "hypothesis"}
requirements = list(project["dependencies"]) + [
    r for r in project["optional-dependencies"].get("dev", []) if re.split(r"[<>=~\[ ]", r, maxsplit=1)[0] in TEST
]
seen = set()
for req in requirements:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(?:>=|~=)\s*([0-9][^,;\s]*)", req)
    if not m:
        continue
    name = m.group(1).lower()
    if name in SKIP or name in seen:
        continue
    seen.add(name)
    print(f"{name}=={m.group(3)}")
sys.exit(0)
