import sys

from chat_sim.cli import main

sys.exit(main())
