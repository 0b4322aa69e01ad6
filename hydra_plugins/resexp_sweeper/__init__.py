"""resexp's Hydra sweeper plugin (hydra_plugins is Hydra's namespace for plugins)."""
