"""μP tools on proxies of a run: the coordinate check (``coord_check``), the learning-rate sweep
(``sweep``) and loss prediction from proxy widths (``predict``, fitted by ``fit``); ``proxies``
derives a proxy's config, ``runner`` trains proxies one process each. The commands: ``cli``."""
