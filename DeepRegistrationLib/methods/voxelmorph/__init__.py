"""VoxelMorph (Balakrishnan et al. 2019; Dalca et al. 2018): a U-Net predicts a (diffeomorphic) deformation.

Modules: :mod:`.kinds` (stage settings, registered in the method registry), :mod:`.network` and :mod:`.unet`
(the network, in plain PyTorch), :mod:`.model_grid` (where and how a network sees its images),
:mod:`.inference` (the stage runner; model folders are :mod:`DeepRegistrationLib.io.models`),
:mod:`.training` and :mod:`.augment` (training; MONAI is not needed), :mod:`.onednn` (CPU convolutions).
Inference never imports the training modules.
"""
