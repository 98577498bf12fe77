"""Orchestration (layer 4): runs, staged runs and how a trainer starts, growth of checkpoints, and the
`flm grow` / `flm ckpt` / `flm data` subcommands.
"""
