"""A frozen base stored quantised (int8 or QLoRA's NF4), dequantised per dense product."""

from lora_jax.quant.base import QuantShardingError, abstract_tree, dequantize_tree, describe, \
    is_quantized_tree, nbytes, quantize_tree, shardings
from lora_jax.quant.base_file import load as load_base, quantize_file, save as save_base
from lora_jax.quant.dense import dequantized
from lora_jax.quant.kernels import KINDS, NF4_LEVELS, Int8Kernel, NF4Kernel, dequantize, \
    is_quantized, quantize
