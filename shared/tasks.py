"""Task names: callers use these with ``send_task`` and never import worker code (the queue is IRIS_QUEUE)."""

# Public tasks: any Celery client may call them by name.
CLASSIFY = "iris.classify"
CLASSIFY_BATCH = "iris.classify_batch"

# Internal task of the API's edge batcher: rows gathered from concurrent requests, each with its own
# task id, answered under those ids and on one reply channel per API process.
CLASSIFY_ROWS = "iris.classify_rows"

# Remote-control command a worker answers only once its model is loaded and warm.
MODEL_INFO_COMMAND = "iris_model_info"

# Remote-control command that makes every worker check its model alias now, rather than at its next poll
# (MODEL_POLL_SECONDS); it answers at once with a ticket that MODEL_INFO_COMMAND's reply answers once checked.
RELOAD_MODEL_COMMAND = "iris_reload_model"
