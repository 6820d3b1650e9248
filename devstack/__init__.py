"""The development harness: everything that runs the project on one machine.

- :mod:`devstack.supervisor`: the one supervisor of detached processes (PID files, logs,
  readiness checks, status) and the status table printer;
- :mod:`devstack.stack`: broker, MongoDB, Redis; :mod:`devstack.metrics_stack`: statsd,
  carbon, graphite-web; :mod:`devstack.apps`: FAISS service, API, worker — each a
  supervisor;
- :mod:`devstack.pidfiles`: "stop only what we started";
- :mod:`devstack.processes`: attached child processes for tests and benchmarks
  (``WorkerProcess``, ``ServiceProcess``), a sync producer, ``free_port``, ``wait_for``;
- :mod:`devstack.replay`, :mod:`devstack.readback`: publish a data set, count it back;
- :mod:`devstack.malformed`: malformed events; :mod:`devstack.statsd_listener`: statsd
  packets as a benchmark sees them; :mod:`devstack.graphs`: PNG graphs from Graphite;
  :mod:`devstack.wrk`: the figures of a ``wrk`` report;
- :mod:`devstack.drills`: fault drills in a namespaced world.

The command lines are thin ``main()`` wrappers in ``scripts/`` (``python -m scripts.stack``,
``scripts.apps``, ``scripts.drill``, ...). Nothing here runs at import.
"""
