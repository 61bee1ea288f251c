"""``make demo``: podiam's main job on this machine, following the Kiam guide's test chapter.

Real-node mode (the default as root): two real nodes (localcluster/controlplane:
kubelet, containerd, runc, CNI, each in a network namespace), moto's IAM and
STS, ``helm install`` of charts/podiam, then the guide's steps with kubectl
and, through ``kubectl exec``, the AWS CLI in the guide's pod. Stand-in mode
(the fallback, saying why, or ``--mode standin|netns|loopback``): the control
plane without kubelets, the operator and proxies as local processes, the pod
in a network namespace or on loopback. Everything it starts is stopped and
removed at the end, on failure and on Ctrl-C. Modules: ``nodes_cluster`` and
``nodes_guide``; ``standin_pods``, ``standin_cluster`` and ``standin_guide``;
``iam`` (roles in moto), ``kubectl``, ``show`` (the screen), ``checks``.
"""
