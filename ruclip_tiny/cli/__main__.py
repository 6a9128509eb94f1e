"""``python -m ruclip_tiny.cli``: the ``ruclip-tiny`` command."""

import sys

from ruclip_tiny.cli import main

sys.exit(main())
