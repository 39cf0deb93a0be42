"""The HTTP side (Starlette): audit queries and writes, health, OpenAPI; `create_app` in app.py."""
