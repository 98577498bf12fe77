"""flm-grow's training side, in layers that import only downward (docs/architecture.md):

0. configs and foundations: ``errors``, ``log``, ``config_base``, ``config``, ``data.config``;
1. ``growth/`` (a package of its own): growth as pure functions on logical tensors;
2. ``checkpoint``: the checkpoint format and its IO (meta, atomic commit, DCP tensor IO, logical views);
3. ``engine`` (megatron-core / DeepSpeed, model, optimizer, parallel setup), ``data`` (the pipeline),
   ``metrics``;
4. orchestration: ``grow`` (growing checkpoints), ``stages``, ``run``, ``grow_cli``, ``data.cli``;
5. apps: ``hf``, ``plan``, ``iq_backend``, ``dryrun`` (and the ``eval_iq`` package);
6. ``cli``: the ``flm`` command.

Importing this package does nothing: the CPU bridge for megatron-core is installed by
``training.engine`` (the only layer that imports megatron).
"""
