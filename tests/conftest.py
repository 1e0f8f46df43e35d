import os
import sys
from pathlib import Path

# tests import helpers such as fake_openai from this folder
sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]
# The project's read-only benchmark data sits beside the checkout (../shared/data), as on CI;
# GENAD_SHARED_DATA points elsewhere when the checkout lives somewhere else.
SHARED_DATA = Path(os.environ.get("GENAD_SHARED_DATA") or ROOT.parent / "shared" / "data")
