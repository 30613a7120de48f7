"""`python -m ftte_cli.client --bundle DIR --server URL`: the device agent."""

from __future__ import annotations

import sys

from ftte_cli.client.agent import main

sys.exit(main())
