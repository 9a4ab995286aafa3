"""MLflow: where runs are stored (``store``), the sweep's parent and child runs with the outage
outbox (``runs``), the model registry and its champion policy (``registry``), and the served model
(``model``, logged from ``model_code``).

The one room that imports MLflow. Kept free of imports here, so that loading the served model
imports only what it needs.
"""
