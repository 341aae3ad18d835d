"""A learned model of human motion (HP-GAN, Barsoum et al. 2018) and its uses.

- :mod:`.data`: joints of the model, per-person normalisation, training windows.
- :mod:`.model`: the GRU sequence-to-sequence generator and the sequence critics.
- :mod:`.losses`: WGAN-GP, bone-length and consistency losses.
- :mod:`.trainer`: ``posesynth train-motion`` (:class:`MotionTrainer`).
- :mod:`.sampler`: :class:`LearnedArmSampler` (``--augment learned:RUN``),
  :class:`PlausibilityCritic` (``--plausibility RUN``), :func:`continue_motion`.
- :mod:`.metrics`: bone-length error, joint angles, angle histograms and coverage.
- :mod:`.evaluate`: ``posesynth motion-metrics``.
"""
