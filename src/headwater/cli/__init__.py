"""The ``headwater`` command line.

Exit codes: 0 ok, 1 failure, 2 usage. Errors go to stderr as one readable line
(a config error lists each problem on its own line, with file and line).
Commands other than ``up`` talk to a running Headwater through the admin API
(``--server``, default http://127.0.0.1:8080, or ``HEADWATER_SERVER``).
Long jobs (replay, re-drive) show progress with delivered, failed and
remaining events, on a terminal as a bar and otherwise as a line every few
seconds; Ctrl-C cancels the job it started on the server too.
"""

from headwater.cli import deadletters, events, resources, tools, up
from headwater.cli._common import main

__all__ = ["main"]

# The command modules add their commands to `main` when imported.
_COMMANDS = (deadletters, events, resources, tools, up)
