import sys

from avatarcast.cli.main import main

sys.exit(main())
