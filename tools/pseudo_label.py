"""`python tools/pseudo_label.py ...` runs `python -m vidssl.app.pseudo_label ...`
(documented there) with this checkout's vidssl, installed or not."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vidssl.app.pseudo_label import main  # noqa: E402

if __name__ == "__main__":
    main()
