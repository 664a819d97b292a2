"""OpenAI wire formats: parsing, validation and rendering, with no web framework in sight."""
