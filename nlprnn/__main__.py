import sys

from nlprnn.cli import main

sys.exit(main())
