"""Modality translation (a learned multimodal route): a network maps the moving image into the fixed image's
contrast, then any monomodal stage registers.

Modules: :mod:`.kinds` (the ``translate`` stage, registered in the method registry), :mod:`.network` (ResNet
generator and PatchGAN discriminator, 2D and 3D), :mod:`.inference` (the stage runner and ``deepreg translate``),
:mod:`.training` (NeMAR, geometry-preserving, and CycleGAN). Inference never imports the training module.
"""
