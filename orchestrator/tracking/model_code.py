"""The file MLflow logs as the served model's code ("model from code") and runs when it loads it.

It only names the model; everything else is in :mod:`.model`, shipped beside it in the model's
``code/`` folder.
"""

import mlflow.models

from metasweep.orchestrator.tracking.model import MetaLearnerModel

mlflow.models.set_model(MetaLearnerModel())
