"""The quickstart: a small system trained on synthetic shapes, its quality check and the demo."""
