"""Checks that ymn's exports load in other libraries' pins (each builds its own venv)."""
