"""Fault scenarios on real processes: reduced size in ``make test``, full size in
``make chaos`` (``python -m tests.chaos``)."""
