#!/usr/bin/env python
"""Measure golden figures of EDM's DDPM++ (EDMPrecond + SongUNet) from NVlabs' own code.

    python tests/golden/edm_figures.py --edm PATH/TO/edm --out tests/golden/edm_008a4e5.npz

PATH is a checkout of github.com/NVlabs/edm (the figures come from commit 008a4e5); nothing of it
is copied here (its licence is CC BY-NC-SA), it is imported at run time from PATH. The script
writes one npz of tensors (float32 unless the key list below says otherwise, keys with '/'
separators) and a JSON beside it (same stem) with the commit, the torch version, the configs,
the scalar figures and a description of the network-snapshot pickle format. Everything runs on
the CPU in fp32, on one thread, with torch.use_deterministic_algorithms(True).

Two configs of EDMPrecond(img_channels=3, label_dim=10, use_fp16=False, sigma_data=0.5,
model_type='SongUNet') with the DDPM++ settings of train.py --arch=ddpmpp (positional embedding,
standard encoder/decoder, channel_mult_noise 1, resample_filter [1,1]): `c32` (32x32, 16 channels,
channel_mult [1,2,2], 2 blocks, attention at 16, dropout 0.13, augment_dim 9) and `c8` (8x8, 16
channels, channel_mult [1,2], 1 block, attention at 4, dropout 0, augment_dim 0). Per config:

    {c}/init/<key>              figures of the state_dict right after torch.manual_seed(0) and
                                construction: float64 [sum, norm, projection, 16 elements]
                                (edm_reference/convert.py `figures_of`; whole weights would be megabytes)
    (not stored)                init + 0.02 * randn per parameter (torch.Generator seed 1, drawn in
                                state_dict order for parameters only; buffers, i.e. the resample
                                filters, stay as built; edm_reference/figures.py `perturb`, which the
                                test calls on its own init); loaded for fwd, loss, sample
    {c}/fwd/{x,sigma,class_labels,augment_labels,out,out_uncond_labels_zero}
    {c}/loss/{images,labels,rnd_normal,noise,sigma,loss}   EDMLoss on the eval-mode net
    {c}/sample/{latents,class_labels}
    {c}/sample/steps{5,18}/images_uint8   uint8 NHWC, generate.py's conversion
    {c}/sample/steps{5,18}/images_float   float64, edm_sampler's output
    {c}/sample/steps{5,18}/sigmas_called  float64, the sigma of every net call in order

and for c8 three training steps of NVlabs' own `training_loop.training_loop` (see
edm_reference/training_run.py):

    c8/step{s}/{images,labels,rnd_normal,noise,loss_sum}   what step s drew (float32)
    c8/step{s}/{lr,ema_beta}                               float64 scalars, as the loop set them
    c8/step{s}/net/<param>, c8/step{s}/ema/<param>         figures of the parameters after step s

The code is the package tests/golden/edm_reference/ (its __init__ lists one module per part); this
file is only its entry point. training_loop runs on a CPU under run-time stand-ins that only this
process gets and that are undone afterwards (edm_reference/stand_ins.py), and two observers record
it (edm_reference/training_run.py).
"""

from __future__ import annotations

from edm_reference.cli import main   # tests/golden is sys.path[0] when this file runs as a script

if __name__ == "__main__":
    main(__doc__.splitlines()[0])
