"""The seed's design as a yardstick: one Flask app with the model in the web process, served by gunicorn.

The seed (https://github.com/giulianoLacerda/api-iris-classifier) loads its MLflow model once, before gunicorn
forks its workers (``--preload``), and runs scikit-learn's ``predict_proba`` in the web worker on each request.
This server does the same with the model this stack's workers serve, ``models:/IRIS_MODEL_NAME@IRIS_MODEL_ALIAS``
in ``MLFLOW_TRACKING_URI`` (read through shared.settings, as the workers read them), and answers
``POST /v1/classify`` with this stack's contract: the body checked by shared.schemas.ClassifyPayload, the seed's
envelope, and the fields a worker's prediction carries (no ``task_id``: there is no task).

It never trains: against another model than the stack's, a comparison would measure two models, not two designs.
With no champion it exits with one line naming ``make train`` (``make up`` trains one when there is none).

Run from the repository's root with the project's environment (``make side-by-side`` and ``make bench`` start it)::

    .venv/bin/python -m load.seed_baseline --port 9290     # gunicorn -w 2 --threads 2 --preload

The seed's own deployment ran ``gunicorn --workers 1 --threads 2 --preload`` on a one-CPU instance; the
default here is one worker per core of a two-core machine (``--workers 2``), as this stack's ``make up`` runs
two API processes, and as every side-by-side figure in the README was measured. ``--workers 1`` is the seed's.
"""

import argparse
import sys
import warnings
from typing import Any


def champion() -> tuple[str, str, str]:
    """Return (model name, version, run id) of the version the alias names, or exit naming `make train`."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from shared.settings import get_settings

    settings = get_settings()
    try:
        version = MlflowClient(tracking_uri=settings.mlflow_tracking_uri).get_model_version_by_alias(
            settings.iris_model_name, settings.iris_model_alias
        )
    except MlflowException:
        sys.exit(
            f"no model at {settings.model_uri} in {settings.mlflow_tracking_uri}: train one with `make train` "
            "(make up trains one when there is none)"
        )
    return settings.iris_model_name, str(version.version), str(version.run_id)


def create_app() -> Any:
    """Load the champion into this process and return the Flask app that classifies with it."""
    import mlflow
    import mlflow.sklearn
    from flask import Flask, jsonify, request
    from pydantic import ValidationError

    from shared.schemas import ClassifyPayload, format_validation_error
    from shared.settings import get_settings

    settings = get_settings()
    name, version, run_id = champion()
    # Set, not left to MLflow's default store (its own sqlite:///mlflow.db), as the seed did.
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    # By version, not alias: the figures then belong to the version named in each answer, even if the alias moves.
    estimator = mlflow.sklearn.load_model(f"models:/{name}/{version}")
    # The pipeline was fitted on a DataFrame; rows come as lists, as in the seed. The worker silences this too.
    warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)
    labels = [str(label) for label in estimator.classes_]
    app = Flask(__name__)

    def failed(status: int, raised: str, message: str) -> Any:
        error = {"raised": raised, "raisedOn": "ApiClassify", "message": message, "code": str(status)}
        return jsonify(message="failed", data=None, error=error, version=settings.tag), status

    @app.post("/v1/classify")
    def classify() -> Any:
        if not request.is_json:
            return failed(415, "UnsupportedMediaType", "send the body as JSON with Content-Type: application/json")
        try:
            payload = ClassifyPayload.model_validate_json(request.get_data(cache=False))
        except ValidationError as exc:
            return failed(400, "ValidationError", format_validation_error(exc))
        proba = [float(p) for p in estimator.predict_proba([payload.row()])[0]]
        best = max(range(len(proba)), key=proba.__getitem__)
        data = {
            "pred_label": labels[best],
            "pred_confidence": proba[best],
            "probabilities": dict(zip(labels, proba, strict=True)),
            "model_name": name,
            "model_version": version,
            "model_run_id": run_id,
        }
        return jsonify(message="success", data=data, error=None, version=settings.tag)

    return app


def serve(host: str, port: int, workers: int, threads: int) -> None:
    """Serve :func:`create_app` with gunicorn, loaded once before the workers fork, as the seed ran it."""
    from gunicorn.app.base import BaseApplication

    class Seed(BaseApplication):
        # gunicorn's documented embedding: unlike its command line, it reads no ./gunicorn.conf.py (the API's).
        def load_config(self) -> None:
            options = {"bind": f"{host}:{port}", "workers": workers, "threads": threads, "preload_app": True}
            # Its default control socket is one path in $HOME for every gunicorn on the machine.
            options["control_socket_disable"] = True
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return create_app()

    Seed().run()


def main(argv: list[str] | None = None) -> None:
    """Check that a champion exists, then serve the seed's design with gunicorn until stopped."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9290)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (the seed ran 1)")
    parser.add_argument("--threads", type=int, default=2, help="threads per worker, as the seed ran")
    args = parser.parse_args(argv)
    champion()  # a missing model is one line here, not a traceback from gunicorn's master
    serve(args.host, args.port, args.workers, args.threads)


if __name__ == "__main__":
    main()
