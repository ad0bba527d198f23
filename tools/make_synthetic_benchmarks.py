"""`python tools/make_synthetic_benchmarks.py ...` runs `python -m vidssl.app.make_synthetic_benchmarks ...`
(documented there) with this checkout's vidssl, installed or not."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vidssl.app.make_synthetic_benchmarks import main  # noqa: E402

if __name__ == "__main__":
    main()
