"""pykernels benchmarks: one bench_<op>.py per op stem plus the runner (bench.run).

Shipped inside the package as pykernels.bench.  Run: python -m pykernels bench [OPS...] [--quick]
"""
