"""posesynth.augment (see the README's code layout)."""
