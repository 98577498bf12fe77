"""The decoder LM: megatron-core ``GPTModel`` with this project's layer spec.

``build_model`` is the entry point. The spec's modules (``norms``, ``attention``, ``mlp``,
``layer``) carry optional growth masks; with all masks unset the model is a plain GPT.
"""
