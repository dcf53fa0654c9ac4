"""The browser demo: ``python -m models.app`` (service.py: the chain for one photo; page.py: the page)."""
