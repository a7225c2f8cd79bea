"""pipewarden: runs a host's automation pipelines under a watchdog and says what is wrong."""

__version__ = "0.1.0"
