from stillroom.cli import app

app()
