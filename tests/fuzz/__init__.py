"""The fuzz suite: generated calls over gpunet's public API and the raw
gpunet._C_sim bindings, each run in a reusable worker subprocess
(tests/fuzz/worker.py; a crash or a hang costs that worker only) and
classified (tests/fuzz/runner.py):

    clear    an exception of an expected type whose message names an
             argument or says what was expected
    unclear  anything else that raised
    silent   no error, but the result disagrees with a NumPy/PyTorch oracle,
             or is non-finite from finite input
    hang     no answer within the call's time limit
    crash    the worker died (a signal or an exit)

tests/fuzz/test_fuzz.py runs a seeded, bounded sample in the default suite;
`python -m tests.fuzz --calls 5000` runs it at length (see --help).
"""
