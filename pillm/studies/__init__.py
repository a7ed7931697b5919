"""Studies on top of the training procedures: each a kind of run with its own spec and ``execute``.

=================  ==========================================================================
``adapt``          adapting a trained checkpoint to a new domain (re-solve, LoRA, fine-tuning)
``firstlayer``     a trained attention→PIL model's FFNs re-solved with data-dependent projections
``lampath``        the same re-solve with the ridge λ chosen per layer on validation
``fixedattn``      pure PIL with hand-set attention heads instead of random ones
=================  ==========================================================================

``firstlayer`` and ``lampath`` share one re-solve path (:mod:`pillm.studies.resolve`).
"""
