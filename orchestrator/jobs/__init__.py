"""Sweeps as Ray jobs, from the submitting machine: the Jobs API client (``client``) and what a
submission checks and sends (``submit``). The room that imports ``ray.job_submission``; it never
imports Ray Tune.
"""
