"""The failure every drill raises, in a module of its own.

``python -m scripts.drill`` runs ``scripts/drill.py`` as ``__main__``; a drill in another
module importing ``scripts.drill.DrillFailed`` would get a second class that the runner
does not catch. Both import it from here instead.
"""

from __future__ import annotations


class DrillFailed(AssertionError):
    """A drill's expectation did not hold; the message says which and by how much."""
