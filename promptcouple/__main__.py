import sys

from promptcouple.cli import main

sys.exit(main())
