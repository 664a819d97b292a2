"""Distillation: stored completions become fine-tuning datasets."""
