import sys

from lightning_seg.cli import main

if __name__ == "__main__":
    sys.exit(main())
