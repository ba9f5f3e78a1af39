"""Train the Iris classifier and register it in MLflow behind the champion alias."""
