"""``make bench``: the broker's hot path, cold path, herd, scale and abuse numbers on this
machine, in one table (``bench/results.md``), measured on real processes over loopback.

Modules: :mod:`bench.procs` (child processes, CPU pinning, ``/proc`` readings),
:mod:`bench.client` (the Python load client, always run as a separate process),
:mod:`bench.load` (the ``wrk`` driver and the client runner), :mod:`bench.targets` (the
baseline servers), :mod:`bench.seed` (deployments and bulk seeding), :mod:`bench.scenarios`
(what is measured), :mod:`bench.report` (the table and the machine description).
"""
