"""MLflow models-from-code entry point of the registered umeflow model (see ``umeflow.registry.pyfunc``).

MLflow copies this file into the logged model and runs it when the model is loaded; the umeflow package itself
travels in the model's ``code/`` folder. Weights are loaded in ``EmbeddingModel.load_context``, not here.
"""

from mlflow.models import set_model

from umeflow.registry.pyfunc import EmbeddingModel

set_model(EmbeddingModel())
