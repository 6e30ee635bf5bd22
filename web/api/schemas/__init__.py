"""Pydantic models at the HTTP edge: request validation, responses and the OpenAPI document."""
