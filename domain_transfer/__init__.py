"""Domain transfer (CycleGAN, CyCADA): simulator frames to the look of real images.

CycleGAN (Zhu et al. 2017) is one module per role: `networks` (ResNet G/F, PatchGAN D),
`losses`, `image_pool` (history of fakes), `cyclegan_config` (the `fit:` section),
`cyclegan_train` (modules, optimizers, one iteration), `cyclegan` (the translator that is
saved and sampled) and `cyclegan_family` (the `cyclegan` generator family).

CyCADA (Hoffman et al. 2018) builds on them the same way: `cycada_networks` (the task
networks f_S, f_T), `cycada_losses` (task and semantic-consistency losses), `cycada_config`,
`cycada_train`, `cycada` (translator plus the adapted task model) and `cycada_family`.
"""
