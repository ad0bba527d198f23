"""`python tools/benchmark.py ...` runs `python -m vidssl.app.benchmark ...`
(documented there) with this checkout's vidssl, installed or not."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vidssl.app.benchmark import main  # noqa: E402

if __name__ == "__main__":
    main()
