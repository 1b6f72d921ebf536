"""The course's build and grading tools, on top of nbgrader: see `python -m autograder --help`."""
