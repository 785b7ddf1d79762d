"""Classical iterative registration: linear stages (translation, rigid, similarity, affine) and the
diffeomorphic stationary-velocity-field stage (``svf``), optimised by gradient descent on a physical-space
pyramid (CPU or CUDA). Settings and registration: :mod:`.kinds`; runners: :mod:`.linear`, :mod:`.svf`."""
