"""LoRA as a pytree of its own: specs and rules, the factorised forward, merges, the .lora file."""

from lora_jax.lora.adapter import Adapter, abstract_params, init_adapter, init_params, \
    partition_specs, scales_of, shardings
from lora_jax.lora.adapter_file import AdapterFileError, AdapterRecord, load_adapter, save_adapter
from lora_jax.lora.forward import Active, UnusedAdapterError, apply, inject
from lora_jax.lora.compat import IncompatibleAdapterError, check_adapter, check_stack
from lora_jax.lora.fingerprint import fingerprint
from lora_jax.lora.merge import BLEND_MODES, blend_weights, concat, merge, svd_compress, \
    unit_scale_spec, unmerge
from lora_jax.lora.sharded_merge import merge_sharded
from lora_jax.lora.spec import LoraRuleError, LoraSpec, Target, describe, resolve
