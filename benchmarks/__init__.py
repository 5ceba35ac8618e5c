"""Speed, memory, scaling and data-loading benchmarks (JSON out, markdown tables printed).

Run from the repository root::

    python -m benchmarks.speed    # training / inference speed, memory, FLOP/s efficiency, scaling, options
    python -m benchmarks.data     # parse vs cached load time, loader vs training samples/s per task
"""
