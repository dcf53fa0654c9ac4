"""Evaluation: metrics, evaluating folders of reconstructions, plots.

``METRIC_NAMES`` lives here, not in ``metrics``, so that ``evaluate.py --help`` lists them without
importing torch.
"""

# Names a user can ask for; "semantic" yields sem_miou and sem_pixel_accuracy, "fid"/"kid" also
# their patch variants; "clip_s" is Hessel et al.'s CLIP-S, "clip_score" torchmetrics' CLIP score.
METRIC_NAMES = ("psnr", "ssim", "ms_ssim", "lpips", "dists", "clip_score", "clip_s", "semantic", "fid", "kid")
