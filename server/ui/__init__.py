"""Kiln's web pages: Jinja2 templates and plain JavaScript/CSS assets, all served by Kiln itself.

The pages are generated from what the server already knows, never written per endpoint: a
playground's form comes from the endpoint's input schema (the one its OpenAPI document publishes,
described by `forms.input_fields`), the home page from `/health`'s facts. `kiln compare` uses the
same field descriptions to read `NAME=VALUE` arguments.
"""
