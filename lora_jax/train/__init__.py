"""The one sharded training loop every model family shares.

  family.py      the surface a family plugs in through (`Family`)
  config.py      ConfigDict -> frozen dataclasses (`from_config_dict`, `load`)
  mesh.py        the ('data', 'fsdp', 'model') mesh, partition rules, batch sharding
  state.py       shapes-first initialisation of the donated `TrainState` and the `Frozen` arrays
  step.py        the pure train/eval steps and their one-time jit
  optimizer.py   AdamW, schedule, clipping, per-group learning rates
  precision.py   float32 / bfloat16 / float16 policies and the dynamic loss scale
  batches.py     the resumable in-memory batch iterator
  checkpoint.py  Orbax checkpoints (state, loop position, metadata)
  metrics.py     CSV, TensorBoard, console, status.json
  preemption.py  SIGTERM/SIGINT as a request to checkpoint and stop
  workdir_lock.py  one run per workdir (an flock released with the process)
  resume.py      which checkpoint to resume from, and whether the settings allow it
  exit_status.py the launchers' exit status: 75 for a stopped, resumable run
  loop.py        `train(config, workdir)`

Nothing is imported here, so a family module can import `lora_jax.train.family` alone.
"""
