"""The compute version: what makes a stored result current.

A run's key is its resolved configuration, the data checksums and :data:`COMPUTE_VERSION`; the source
text is not part of it, so refactoring leaves every stored result current. A change that moves the
numbers the library computes is a deliberate bump here, which makes the stored results stale.
``tests/test_tripwire.py`` fails when the numbers move without a bump; after bumping, regenerate its
golden file with ``python -m pillm.tripwire``.
"""

#: Recorded in every ``result.json``, every run key and every experiment's staleness hash.
COMPUTE_VERSION = 1
