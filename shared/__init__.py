"""The contract between the API, the workers and any other Python service: names, schemas, settings."""
