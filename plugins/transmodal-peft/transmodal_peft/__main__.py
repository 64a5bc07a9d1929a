import sys

from transmodal_peft.cli import main

sys.exit(main())
