"""One module per CLI command; each exports one function (or a Typer sub-app)."""
