"""The classroom lab, shipped in the wheel as package data (lbsync.labs): lab.toml, the
task pages and the report template."""
