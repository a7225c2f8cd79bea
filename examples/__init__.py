"""Example workers used by the demo pipelines in config.example.yaml."""
