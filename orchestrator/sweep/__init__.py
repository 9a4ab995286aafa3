"""The sweep: Ray Tune drives the trials, Optuna chooses their settings.

``space`` translates the config's search space into Optuna's, ``trial`` is one trial (settings in,
metrics reported to Tune), ``callback`` mirrors trial events into MLflow through the tracking room,
``driver`` runs the search and hands its result on, ``plots`` draws it. The one room that imports
Ray Tune and Optuna.
"""
