"""The data pipeline: corpus -> tokenizer -> packed token shards -> seeded, resumable samples.

Modules, one job each: ``ingest`` (reading corpora through ``datasets``), ``tokenizer``
(sentencepiece training/loading), ``shards`` (on-disk layout, writer, reader), ``prepare``
(tokenizing into shards with worker processes), ``splits`` (held-out documents), ``sampler``
(packing and per-epoch order), ``blend`` (weighted mixing), ``default_corpus`` (the embedded
offline corpus), ``build`` (``build_sources`` for the trainer), ``cli`` (``flm data``).
See docs/data.md.
"""
