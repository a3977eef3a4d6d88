"""`moto_server` with the fixes in moto_fixes.py: the plain (not IAM-enforced) moto of the
tests. Same arguments as moto_server."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import moto_fixes  # noqa: E402

moto_fixes.apply()

from moto.server import main  # noqa: E402

if __name__ == "__main__":
    main()
