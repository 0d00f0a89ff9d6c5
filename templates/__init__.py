"""Jinja2 templates shipped with lbsync (haproxy.cfg, crossbar, supervisord)."""
