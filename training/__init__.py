"""Training activation oracles (dataset builders, mixture, trainer). Filled in by the training work."""
