"""LoRAW's interface (NeuralNotW0rk/LoRAW) over this project's core: Stable Audio's model config
JSON with a `lora` section, its training flags, its weight files, and inference with a
multiplier."""
