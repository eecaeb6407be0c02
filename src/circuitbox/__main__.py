import sys

from circuitbox.cli import main

sys.exit(main())
