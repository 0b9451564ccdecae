"""Video data for SecDOOD: the built-in "digit-actions" clips, optical flow, camera
corruptions, .mp4 input/output and user-supplied folder datasets.

Conventions shared by cloud and device:

- a clip is ``uint8 [T, H, W, 3]`` RGB (default T = 8, H = W = 32); a batch ``[N, T, H, W, 3]``;
- its optical flow is ``float32 [T-1, 2, H, W]`` (dx, dy in pixels), computed by
  :func:`shared.data.flow.compute_flow` on both sides.
"""
