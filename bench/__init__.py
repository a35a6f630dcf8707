"""Benchmarks (not tests): does the pipeline sit on the account's 2 req/s ceiling, and at what cost?

``python -m bench`` runs the same manifest, in the same run, through (a) ``qwenedit run`` (the Prefect
flow), (b) the seed document's sequential dashscope-SDK loop and (c) a naive concurrent httpx loop,
against the emulator started as its own process, and reports rate, 1-s peaks, 429s, images/hour, CPU
per job and peak RSS (``bench/results/<mode>.json``, ``bench/results/rps*.png``). ``python -m bench
memory`` measures peak RSS against manifest size (``bench/results/memory.json``).

Modules: ``metrics`` (pure numbers), ``workload`` (inputs and manifest), ``procs`` (child processes and
their measurement), ``side_by_side`` / ``memory`` (the two benchmarks), ``seed_loop`` / ``naive_loop``
(contenders b and c), ``report`` (tables, JSON, plot).
"""
