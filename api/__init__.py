"""The Flask front of the Iris service: validate, enqueue by task name, answer in the seed's envelope."""

from flask import Flask

from shared.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the API app; nothing connects to Redis until the first request, and no process-wide state changes.

    Process-wide setup (logging, the GIL switch interval) belongs to the entry points: api/wsgi.py for granian
    and gunicorn.
    """
    from api import extension
    from api.observability import metrics, tracing
    from api.routes import classify, demo, docs, health, mlflow_scoring, tasks, v2
    from api.web import auth, envelope, error_handlers
    from api.web.access_log import AccessLogMiddleware
    from api.web.request_id import RequestIdMiddleware

    settings = settings or get_settings()
    keys = auth.load_keys(settings)  # first: set but unusable keys stop the app before anything else is built
    app = Flask(__name__, static_folder=None)
    app.config[envelope.TAG] = settings.tag  # every envelope's "version"
    # One spelling per route: /v1//classify is a 404 in the envelope, not werkzeug's HTML 308 to a URL built
    # from the Host header.
    app.url_map.merge_slashes = False
    # A 1,000-row batch is about 100 kB of JSON; anything far larger is refused before it is read.
    app.config["MAX_CONTENT_LENGTH"] = max(1_000_000, settings.batch_max_rows * 200)
    error_handlers.init_app(app)
    services = extension.init_app(app, settings)
    app.register_blueprint(classify.bp)
    app.register_blueprint(tasks.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(demo.bp)  # GET /: the demo page (api/static/demo/), outside /v1
    app.register_blueprint(mlflow_scoring.bp)  # /invocations, /ping, /version: MLflow's scoring protocol
    app.register_blueprint(v2.bp)  # /v2/...: the Open Inference Protocol V2 (KServe V2) REST routes
    app.register_blueprint(docs.bp)  # /openapi.json and Swagger UI at /docs, outside /v1
    metrics.init_app(app, settings, services)  # GET /metrics, and every answer counted (METRICS=true)
    auth.init_app(app, keys, settings.protect_metrics_and_docs)  # after every route: it protects endpoints
    if settings.access_log:
        app.wsgi_app = AccessLogMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    app.wsgi_app = RequestIdMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    tracing.init_app(app)  # a span per request, outermost; nothing unless the entry point turned tracing on
    return app
