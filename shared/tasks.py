"""Task names: callers use these with ``send_task`` and never import worker code (the queue is IRIS_QUEUE)."""

# Public tasks: any Celery client may call them by name.
CLASSIFY = "iris.classify"
CLASSIFY_BATCH = "iris.classify_batch"

# Internal task of the API's edge batcher: rows gathered from concurrent requests, each with its own
# task id, answered under those ids and on one reply channel per API process.
CLASSIFY_ROWS = "iris.classify_rows"

# Internal task of the API's batch endpoints (/v1/classify/batch, /invocations): one request's rows, validated by
# the API and sent as plain arrays, answered as one list under one task id and on the API process's reply channel.
CLASSIFY_TABLE = "iris.classify_table"

# Headers of an edge batch's or a table's message: how many seconds a result must outlive the message (its
# request may still be waiting), and the key prefix under which the API marks an id whose wait ended unanswered;
# a marked id's result is kept for its poll URL (worker/fastpaths/store_result.py).
RESULT_HOLD_HEADER = "result_hold"
RESULT_MARKS_HEADER = "result_marks"

# Remote-control command a worker answers only once its model is loaded and warm.
MODEL_INFO_COMMAND = "iris_model_info"

# Remote-control command that makes every worker check its model alias now, rather than at its next poll
# (MODEL_POLL_SECONDS); it answers at once with a ticket that MODEL_INFO_COMMAND's reply answers once checked.
RELOAD_MODEL_COMMAND = "iris_reload_model"
