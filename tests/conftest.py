import sys
from pathlib import Path

# tests import helpers such as fake_openai from this folder
sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
