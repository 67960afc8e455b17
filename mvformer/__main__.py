import sys

from mvformer.cli import main

sys.exit(main())
