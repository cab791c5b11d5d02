"""Where ymn's packaged files live (the Hydra configs and the embedded assets), and how a path
is written into a file meant to be shared.

Both ship inside the package, so an installed `ymn-train` composes from any directory.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "conf"
ASSETS_DIR = PACKAGE_DIR / "assets"


def shareable_path(path: Path | str, root: Path | None = None) -> str:
    """`path` as written into a committed record: relative to `root` (default: the working
    directory) when inside it, else its last name, so no local path leaves the machine."""
    resolved = Path(path).resolve()
    base = (root or Path.cwd()).resolve()
    if resolved.is_relative_to(base):
        return resolved.relative_to(base).as_posix()
    return resolved.name
