"""The training tables ``build`` writes: ``pairwise``, ``mcpo`` and ``mpo``.

- ``inputs``: checked lazy scans of build's inputs, their fingerprints, the reference log-prob lookup.
- ``select``: which answers of an ``examples`` row are preferred (pairs, the best answer).
"""
