import sys
from pathlib import Path

# Reuse the test suite's view of both cores (pure and native).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
