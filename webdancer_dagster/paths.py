"""Files the project ships next to the package (the data it may read at run time)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
PYTHON_DOC_DIR = Path("/usr/share/doc/python3.11/html")
