"""Apps (layer 5) that are single modules: the dry run and its report, a checkpoint as an IQ backend.
(The planner, Hugging Face interop and the μP tools are their own packages: training.plan, training.hf, training.mup.)
"""
