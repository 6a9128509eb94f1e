"""``python -m ruclip_tiny``: the ``ruclip-tiny`` command, for environments whose scripts directory is not on PATH."""

import sys

from ruclip_tiny.cli import main

sys.exit(main())
