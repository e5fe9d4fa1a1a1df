"""Evaluation of a trained run: sample quality (FID, IS, KID in Inception or offline-classifier
features), likelihood (bits/dim), and the --mode=eval driver that writes eval/metrics.json."""
