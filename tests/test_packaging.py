"""Every data file the package uses is shipped by a non-editable install (`pip install .`), not only by the editable
install the tests run from: each tracked non-Python file under `avatarcast/` matches a `package_data` pattern."""

from __future__ import annotations

import ast
import fnmatch
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _package_data() -> dict[str, list[str]]:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "package_data":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no package_data")


def test_every_data_file_is_in_package_data():
    data = _package_data()
    files = subprocess.run(["git", "ls-files", "avatarcast"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    if not files:  # not a git checkout (an sdist): nothing to compare
        return
    missing = []
    for f in files:
        if f.endswith(".py") or "__pycache__" in f:
            continue
        shipped = False
        for package, patterns in data.items():
            base = package.replace(".", "/") + "/"
            if not f.startswith(base):
                continue
            rel = Path(f[len(base):])
            # setuptools' globs do not cross folders: "static/*" ships static/x.html, not static/sub/x.html
            shipped = shipped or any(rel.parent == Path(p).parent and fnmatch.fnmatchcase(rel.name, Path(p).name)
                                     for p in patterns)
        if not shipped:
            missing.append(f)
    assert not missing, f"not shipped by `pip install .` (add to package_data in setup.py): {missing}"
