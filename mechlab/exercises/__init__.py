"""The checks under each exercise, one module per chapter.

Every exercise `x` has `check_x(fn)`, the fast visible check a learner runs, and
`grade_x(fn)`, the hidden tests that decide the grade: several seeds, shapes and
edge cases against `mechlab.reference`, with the tolerances they state.
"""
