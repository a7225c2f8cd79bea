"""The tray app (`pipewarden tray`): the daemon's health at a glance, from its API only."""
