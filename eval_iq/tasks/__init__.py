"""lm-eval task and group YAMLs of the IQ benchmark (generated; see ``eval_iq.yaml_tasks``).

Use with ``lm_eval --include_path <this folder>``.
"""
