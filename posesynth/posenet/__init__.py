"""posesynth.posenet (see the README's code layout)."""
