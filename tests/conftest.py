import os
import sys
from pathlib import Path

# tests import helpers such as fake_openai from this folder
sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]
# The project's read-only benchmark data sits beside the checkout (../shared/data), as on CI;
# GENAD_SHARED_DATA points elsewhere when the checkout lives somewhere else.
SHARED_DATA = Path(os.environ.get("GENAD_SHARED_DATA") or ROOT.parent / "shared" / "data")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_lmm_negotiation():
    """What LMM servers accepted is remembered per process by base URL and model; a test's fake
    server may reuse a port an earlier one had, so each test starts with nothing learned."""
    from genad.engines.lmm.negotiate import forget

    forget()
    yield
