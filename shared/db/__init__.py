"""Data layer: engine and sessions, typed models, migrations entry point."""
