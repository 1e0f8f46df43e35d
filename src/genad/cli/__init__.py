"""The `genad` command line: one module per command, all on the app in app.py."""
