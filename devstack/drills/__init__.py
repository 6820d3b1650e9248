"""Fault drills: :mod:`.world` (a namespaced world and ``DrillFailed``), :mod:`.system`
(whole-system drills and the registry ``DRILLS``), :mod:`.stream` (the worker under
hostile input and broker events). ``python -m scripts.drill`` runs them."""
