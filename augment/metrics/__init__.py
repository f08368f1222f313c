"""Quality metrics on feature matrices: distribution distances (FID, KID, IS) and k-NN manifold metrics."""
