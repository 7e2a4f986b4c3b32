"""The monitoring report: a GRMDeployment's Prometheus history turned into what to build, keep or drop.

:mod:`.history` runs the range queries, :mod:`.usage` reduces them to per-variant usage and the
arrival process, :mod:`.whatif` replays the arrivals on the fleet simulator under changed specs and
ranks the changes, :mod:`.document` writes the JSON, the Markdown and the plots, :mod:`.cli` is
``grm-operator report``. It sits beside the command line, above the simulator (import-linter).
"""
