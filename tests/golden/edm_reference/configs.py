"""The measured configs and fixed inputs, in one place so the figures and the JSON that describes them agree.

The two EDMPrecond configs are small on purpose (the figures run on a CPU in seconds) but keep every
DDPM++ feature the project reimplements: attention, resampling, dropout and augment labels in c32;
c8 is small enough for three steps of NVlabs' training loop. FULL is the CIFAR-10 conditional
DDPM++ of train.py --arch=ddpmpp, only counted (on the meta device), never run.
"""

from __future__ import annotations

from typing import Any

COMMIT = "008a4e5"
BATCH = 4
SIGMAS = [0.002, 0.5, 2.0, 80.0]
FWD_CLASSES = [0, 3, 7, 9]
LOSS_CLASSES = [1, 4, 6, 8]
SAMPLE_CLASSES = [0, 2, 4, 6, 8, 9]
SAMPLE_STEPS = (5, 18)
TRAIN_STEPS = 3
DATASET_LABELS = [3, 9, 0, 7, 1, 5, 2, 8]      # 8 PNGs; the largest label makes label_dim 10
DDPMPP = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
              decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1])
CONFIGS: dict[str, dict[str, Any]] = {
    "c32": dict(img_resolution=32, model_channels=16, channel_mult=[1, 2, 2], num_blocks=2,
                attn_resolutions=[16], dropout=0.13, augment_dim=9),
    "c8": dict(img_resolution=8, model_channels=16, channel_mult=[1, 2], num_blocks=1,
               attn_resolutions=[4], dropout=0.0, augment_dim=0),
}
FULL = dict(img_resolution=32, model_channels=128, channel_mult=[2, 2, 2], num_blocks=4,
            attn_resolutions=[16], dropout=0.13)
TRAIN = dict(batch_size=4, batch_gpu=4, lr=1e-3, betas=[0.9, 0.999], eps=1e-8, lr_rampup_kimg=0.006,
             ema_halflife_kimg=0.004, ema_rampup_ratio=None, total_kimg=0.012, kimg_per_tick=0.001,
             snapshot_ticks=1, state_dump_ticks=1, seed=0, loss_scaling=1)


def net_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """EDMPrecond's keyword arguments for a config (interface and DDPM++ settings included)."""
    return dict(img_resolution=cfg["img_resolution"], img_channels=3, label_dim=10, use_fp16=False,
                sigma_data=0.5, **DDPMPP, **{k: v for k, v in cfg.items() if k != "img_resolution"})
