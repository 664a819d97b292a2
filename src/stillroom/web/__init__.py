"""The web console served at `/`: one HTML page and hand-written ES modules, a thin client of the JSON API."""
