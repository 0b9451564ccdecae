"""A tiny class-conditional DDPM on 16x16 digits (ZOODiP in miniature, docs/algorithms/zoodip.md).

One module per concept: :mod:`.data` (digits at 16x16, the held-out concept), :mod:`.schedule`
(DDPM noise schedule and sampler), :mod:`.denoiser` (the conditional conv net), :mod:`.int8`
(int8 weights for the device), :mod:`.artifact` (denoiser and learned-token files),
:mod:`.inversion` (the textual-inversion loss and the backprop baseline).

Model names (``diffusion``, ``diffusion_token``) live in :mod:`shared.model_names`.
"""

#: image side of the diffusion model (digits upscaled from 8x8) and size of its class vocabulary
IMAGE_SIZE = 16
NUM_CLASSES = 10
