"""Registration methods, one package per family, behind one registry of stage kinds.

A *stage* is one step of a registration (``rigid``, ``affine``, ``svf``, ``voxelmorph``...). Each family
package declares its stage kinds (typed settings + a runner) in :mod:`.registry`; the registration pipeline
(:mod:`DeepRegistrationLib.registration`) looks a stage's ``model`` up there and never names a family.

Shared by the families: :mod:`.stage` (settings base, the context and state a runner receives),
:mod:`.pyramid` (physical-space multi-resolution levels), :mod:`.optim` (Adam) and :mod:`.loop` (the one
optimisation loop with progress, cancel and divergence checks).

Families: :mod:`.classical` (iterative linear and diffeomorphic SVF stages) and :mod:`.voxelmorph` (a trained
network, its model grid, training and augmentation). Families never import each other.
"""
