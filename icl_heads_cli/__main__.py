"""``python -m icl_heads_cli``: the ``icl-heads`` command."""

import sys

from icl_heads_cli import main

sys.exit(main())
