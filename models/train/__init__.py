"""Training the ControlNet decoder: data, the Lightning module, one run, data preparation, export."""
