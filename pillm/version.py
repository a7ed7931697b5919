"""The compute version: what makes a stored result current.

A run's key is its resolved configuration, the data checksums and :data:`COMPUTE_VERSION`; the source
text is not part of it, so refactoring leaves every stored result current. A change that moves the
numbers the library computes is a deliberate bump here, which makes the stored results stale.
``tests/test_tripwire.py`` fails when the numbers move without a bump; after bumping, regenerate its
golden file with ``python -m pillm.tripwire``.
"""

#: Recorded in every ``result.json``, every run key and every experiment's staleness hash.
#:
#: - 1: the first paper runs.
#: - 2: FFN weights drawn from their own generator (every FFN kind starts from the same embeddings and
#:   attention at one seed); unsolved FFNs skipped in the forward (so no dropout draws for them); the solved
#:   head's unigram mixture grid reaches 1; centred landmark keys; the η search scores 2,048 validation
#:   tokens unless ``search_tokens`` says otherwise; the fixed-attention study counts its attention
#:   set-up once in ``pil_s``.
COMPUTE_VERSION = 2
