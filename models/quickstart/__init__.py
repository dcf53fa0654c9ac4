"""The quickstart: a small system trained on synthetic shapes, its quality check and the demo.

- ``shapes``: the synthetic shapes world, written and read in the training layout
  (``python -m models.quickstart.shapes``);
- ``model_folder``: the shipped model folder (``checkpoints/shapes/``) and the config pointing at one;
- ``trainers``: the seeded training loops of the small segmenter, BLIP, VAE, UNet + text encoder;
- ``recipe``: the recipe, the architectures and ``train_all``, which trains every component;
- ``quality``: the end-to-end quality check on held-out images;
- ``demo``: the five scripts on unseen images, with a report (``python -m models.quickstart.demo``);
- ``__main__``: ``python -m models.quickstart train|evaluate``.
"""
