"""Encoding: images to semantic codes (DeepLabV3+ label maps, BLIP captions), one folder at a time."""
