"""The OpenAPI 3.1 description served at /openapi.json: the spec and the models only it documents."""
