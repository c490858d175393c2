import sys

from frleak.cli import main

sys.exit(main())
