import sys

from sidelight.cli.main import main

sys.exit(main())
