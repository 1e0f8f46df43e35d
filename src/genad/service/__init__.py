"""The inspection service: `create_app` in app.py (FastAPI), the SQLite store, jobs, the web page in static/."""
