"""`lgemu lab`: several guests in one process, on one virtual timeline, joined by switches.

`config.py` reads the lab file, `switch.py` is the wire between cards (latency, bandwidth,
seeded loss and reordering, the capture), and `scheduler.py` runs the guests: a conservative
scheduler that lets no guest run more than one lookahead (the smallest switch latency) ahead of
the others, so every frame arrives at exactly its send time plus latency on the receiver's
clock, whatever the host's load.  `workers.py` runs the same windows in several processes.
"""
