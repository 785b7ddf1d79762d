"""A learned similarity metric (after Simonovsky et al., MICCAI 2016): a small CNN scores how far apart two
image neighbourhoods are, and the classical optimisers use its mean score in place of MI.

Modules: :mod:`.network` (the two-stream network: a shared encoder and a point-wise scoring head),
:mod:`.pairs` (training pairs: random contrasts and known misalignments of real images), :mod:`.training`
(the training loop). The similarity itself, as the optimisers see it, is
:class:`DeepRegistrationLib.metrics.learned.LearnedSimilarity`; inference never imports the training modules.
"""
