"""Pretrained backbones (placeholder: filled in below)."""


def pick_backbone(channel_positions, model_config):
    return None
