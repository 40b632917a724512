import sys

from vistream.cli import main

sys.exit(main())
