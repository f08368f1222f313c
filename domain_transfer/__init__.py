"""Domain transfer (CycleGAN, CyCADA): simulator frames to the look of real images."""
