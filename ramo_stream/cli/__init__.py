"""The ``ramo`` command: one subcommand per stage, ``ramo up`` (all stages in one process)
and its live view. Only wiring: the stages do the work.

``command`` builds the parser; the subcommands live in one module each; ``up`` and
``up_loop`` run the whole loop. Heavy modules are imported inside the subcommand.
"""

from ramo_stream.cli.command import build_parser, main

__all__ = ["build_parser", "main"]
