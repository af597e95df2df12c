"""GPU speed-ups of the priors' networks: none changes what they compute."""
