"""Episodic datasets: where they are stored (``storage``), their Parquet format (``format``), how
they are imported (``importers``), how episodes are drawn (``sampler``) and how images are read and
prepared (``images``).

The one room that imports pyarrow and PIL. Kept free of imports here, so that the served model,
which needs only ``images``, does not load pyarrow.
"""
