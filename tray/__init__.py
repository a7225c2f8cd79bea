"""The tray app (`pipewarden tray`): arrives with the tray issue; it will talk to the API only."""
