"""Where ymn's packaged files live: the Hydra configs and the embedded assets.

Both ship inside the package, so an installed `ymn-train` composes from any directory.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "conf"
ASSETS_DIR = PACKAGE_DIR / "assets"
