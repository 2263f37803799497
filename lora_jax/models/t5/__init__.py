"""T5's encoder (Stable Audio's text conditioner uses t5-base's), in Flax."""
