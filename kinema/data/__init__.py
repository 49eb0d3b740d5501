"""Data: the procedural world (``world/``) and the pipeline from raw videos to a latent cache.

Reading order for the pipeline: ``config`` (every stage's settings) -> ``shards`` (units, shards,
resumable stages) -> ``manifest`` (the dataset folder and its tables) -> ``decode`` (streaming
frames) -> the stages ``ingest``, ``split`` (math in ``scenes``), ``score`` (math in ``measures``),
``caption``, ``encode`` (writing the ``cache`` format training reads) -> ``inspect``; ``pipeline``
maps `kinema data` onto them, and ``synthetic`` makes videos with known cuts for tests and benchmarks.
Nothing is imported here, so ``kinema.data.world`` needs neither pyarrow nor OpenCV.
"""
