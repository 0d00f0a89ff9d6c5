"""`lbsync lab`: the classroom lab's commands (init, collect, check, pages, sessions).

The lab itself (task pages, report template, lab.toml) lives in labs/ and ships in the
wheel as lbsync.labs; spec.py reads lab.toml, collect.py and tracks.py gather a step's
deliverables from the running stack, check.py grades a lab folder.
"""
