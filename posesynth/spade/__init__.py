"""posesynth.spade (see the README's code layout)."""
