"""Dask preload: this process's log lines are stamped in UTC, marked ``Z``.

Given first among the preloads of every dask process coiled-lab starts (``--preload
coiled_lab.bootstrap.utclog``; ``--preload-nanny`` too on a VM with a nanny), on VMs and by
the local backend. Importing it is its whole work: distributed imports a preload before its
first log line, and by then its handlers are set up, so their formatters are switched
here (:func:`~.logship.utc_stamps`). A dask process otherwise stamps its lines in the
machine's local time with no zone, which a server elsewhere cannot read back. Only the
formatters of handlers are touched: what a user's code logs through handlers of its own is left
as it is. Nothing but a dask process imports this module.
"""

from __future__ import annotations

import logging

from .logship import utc_stamps


def _handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    return [handler for logger in loggers for handler in logger.handlers]


for _handler in _handlers():
    if _handler.formatter is not None and _handler.formatter.datefmt is None:
        utc_stamps(_handler.formatter)
