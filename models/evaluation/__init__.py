"""Evaluation: metrics, evaluating folders of reconstructions, plots."""
