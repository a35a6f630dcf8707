"""The development kit: what the tests, the benchmarks and ``make demo`` run the product against.

Not part of the product and not installed with it (``pyproject.toml`` packages only ``qwenedit`` and
``flows``); it is imported from a checkout, with the repository root as the working directory (pytest
and ``python -m bench`` / ``python -m devkit.demo`` put it on ``sys.path``).

=============  ========================================================================================
Module         What it holds
=============  ========================================================================================
``procs``      one ``free_port`` and readiness waits (``wait_for_http``, ``wait_until``, async variant)
``s3server``   ``S3TestServer``, the base of the two local S3 servers, and ``ensure_bucket``
``seaweed``    ``SeaweedServer``: a real S3 store (SeaweedFS) in its own process
``moto``       ``MotoServer``: an in-process S3 (fast; settings and logic tests)
``emulator``   ``EmulatorProcess``: the DashScope emulator as a child process
``clock``      fake clocks for the emulator and the pacer
``rates``      sliding-window counts of a request log (``max_in_window``)
``demo``       ``make demo``: the whole product on loopback
=============  ========================================================================================
"""
