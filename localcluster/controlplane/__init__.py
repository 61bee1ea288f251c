"""A real Kubernetes control plane for the tests and the demo.

etcd, kube-apiserver and kube-controller-manager built from their published
Go modules (``go/``, cached outside the repository by ``build``), started on
127.0.0.1 with fresh certificates, ``Node,RBAC`` authorization and the
controllers a test cluster needs. ``kubelet`` plays the scheduler's and the
kubelet's parts. CLI: ``python -m localcluster.controlplane build | up | down | status``.
"""

from localcluster.controlplane.client import ApiError
from localcluster.controlplane.controlplane import ControlPlane, ControlPlaneError, KubectlError, wait_until

__all__ = ["ApiError", "ControlPlane", "ControlPlaneError", "KubectlError", "wait_until"]
