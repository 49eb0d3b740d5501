"""What an installed kinema (a wheel, not this checkout) needs besides its Python files is declared as package data."""

from __future__ import annotations

import glob
import subprocess
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_every_data_file_of_the_package_ships_in_its_wheel():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["kinema"]
    declared = {str(Path(p)) for pattern in patterns for p in glob.glob(pattern, root_dir=ROOT / "kinema", recursive=True)
                if (ROOT / "kinema" / p).is_file()}
    tracked = subprocess.run(["git", "ls-files", "kinema"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    data = {str(Path(f).relative_to("kinema")) for f in tracked.split() if not f.endswith(".py")}
    assert data, "git lists no data files: the bundled model and the web page should be there"
    assert data <= declared, f"not in [tool.setuptools.package-data]: {sorted(data - declared)}"
    assert (ROOT / "LICENSE").is_file() and "Apache License" in (ROOT / "LICENSE").read_text()
