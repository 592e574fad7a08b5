import sys

from .supervisor import main

raise SystemExit(main(sys.argv[1:]))
