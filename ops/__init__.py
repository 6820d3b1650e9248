"""Operators' view: metric catalogue, Graphite panels, Grafana dashboard (issue 6)."""
