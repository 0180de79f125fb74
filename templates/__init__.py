"""Jinja2 pilot job templates, installed as the package ``pilot.templates``."""
