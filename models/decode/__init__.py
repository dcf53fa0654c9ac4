"""Decoding: semantic codes back to images with Stable Diffusion 1.5 and a ControlNet."""
