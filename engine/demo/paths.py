"""Where the bundled demo weights live (shipped with the package)."""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
