"""Reference solutions, one module per chapter, GENERATED from `solutions/NN_topic.py`
by `python -m autograder build` (never edit them by hand).

A learner who is stuck on an exercise can take the reference version and go on:
``from mechlab.reference.superposition import toy_forward``. The hidden tests
recognise these functions and give them no points.
"""
