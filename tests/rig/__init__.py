"""The test rig: a loopback stack, a light HTTP member and the process helpers.

Used by tests/ and bench/, never shipped: `pip install .` installs lbsync/ only. Import it
as `tests.rig` (pytest's pythonpath and `python -m bench.run` both start at the checkout).
"""
