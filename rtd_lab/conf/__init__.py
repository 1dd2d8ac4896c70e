"""The Hydra configs, inside the package so that an installed wheel carries them."""
