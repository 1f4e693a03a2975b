import sys

from zephyr.sweeps.entry import main

sys.exit(main())
