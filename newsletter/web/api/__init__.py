"""The JSON API under /api/v1: bearer tokens with a role, the same services as the
console, and its own OpenAPI document at /api/v1/openapi.json."""
