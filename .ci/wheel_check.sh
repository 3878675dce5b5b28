#!/usr/bin/env bash
# augpipe as a user installs it: a wheel built from the files git knows, installed (not editable)
# into a fresh virtual environment, run from a folder outside the repository. An editable install
# reads plugins/, cli/ and the sample data straight from the tree, so a slip in package-dir or
# package-data passes every other check and shows only here.
#
# Run it with the CI environment active (.ci/run does). The wheel is built as a user's pip builds
# it, in an isolated environment with the build-system's setuptools; the fresh environment
# borrows augpipe's dependencies from the CI environment through a .pth line rather than
# installing torch again. Python reads the fresh environment's own site-packages first, and importlib.metadata
# keeps the first distribution of a name, so augpipe and its entry points come from the wheel;
# the script checks that before it runs anything.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
# Every site-packages folder the CI environment's python reads (not the editable link tree).
deps="$(python -c 'import sys; print("\n".join(p for p in sys.path if p.endswith("-packages")))')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A copy of the tracked and new (not ignored) files: a build in the tree would leave build/ behind,
# and a stale build/lib can carry a deleted module into the wheel.
mkdir "$work/src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - 2>/dev/null) \
    | tar -xf - -C "$work/src"
python -m pip wheel -q --no-deps -w "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/augpipe-*.whl)"

python -m venv "$work/venv"
site="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$deps" > "$site/zz_ci_dependencies.pth"
"$work/venv/bin/python" -m pip install -q --no-deps --no-index "$wheel"

mkdir "$work/elsewhere"
cd "$work/elsewhere"
export PATH="$work/venv/bin:$PATH"
"$work/venv/bin/python" - "$site" <<'EOF'
import sys
from importlib.metadata import distribution
from pathlib import Path

import augpipe.cli.main
import augpipe.plugins.resnet
import augpipe.sample_data

site = Path(sys.argv[1]).resolve()
for module in (augpipe.cli.main, augpipe.plugins.resnet):
    if site not in Path(module.__file__).resolve().parents:
        sys.exit(f"wheel check: {module.__name__} was imported from {module.__file__}, not from the wheel")
dist = distribution("augpipe")
if site not in Path(str(dist.locate_file(""))).resolve().parents and Path(str(dist.locate_file(""))).resolve() != site:
    sys.exit(f"wheel check: the augpipe metadata read is not the wheel's ({dist.locate_file('')})")
images = list(Path(augpipe.sample_data.__file__).parent.glob("shapes/*/*.jpg"))
if not images:
    sys.exit("wheel check: the wheel has no sample images (package-data)")
print(f"wheel check: augpipe {dist.version} imported from the wheel, {len(images)} sample images in it")
EOF
augpipe --version
augpipe --help >/dev/null
plugins="$(augpipe plugins)"
grep -q '^resnet  (augpipe' <<<"$plugins" || { echo "wheel check: augpipe plugins lists no resnet:" >&2; echo "$plugins" >&2; exit 1; }
augpipe preview --n 2 --variants 2 --out preview.png
test -s preview.png
echo "wheel check: passed ($(basename "$wheel"))"
