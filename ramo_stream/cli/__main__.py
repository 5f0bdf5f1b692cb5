"""``python -m ramo_stream.cli``: the ``ramo`` command."""

import sys

from ramo_stream.cli.command import main

sys.exit(main())
