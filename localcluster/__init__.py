"""The local cluster: podiam on a real Kubernetes cluster on this machine, with no cloud.

What ``make demo``, the benchmarks and the tests run on (see README.md here).
"""
