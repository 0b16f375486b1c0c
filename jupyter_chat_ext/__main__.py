"""``python -m jupyter_chat_ext`` is the ``jupyter-chat-ext`` command."""

import sys

from .cli import main

sys.exit(main())
