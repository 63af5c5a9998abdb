import sys

from coded_invnet.training.cli import main

sys.exit(main())
