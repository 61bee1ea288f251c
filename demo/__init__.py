"""``make demo``: podiam's main job on this machine, following the Kiam guide's test chapter.

The real control plane (tests/controlplane), moto's IAM and STS, the operator
in TLS auto mode and a proxy on each of two fake nodes, all real processes;
then the guide's steps with kubectl and, as the pod, the real AWS CLI.
Everything it starts is stopped and removed at the end, on failure and on
Ctrl-C. Modules: ``pods`` (netns or loopback), ``cluster`` (start-up),
``iam`` (roles in moto), ``guide`` (the steps), ``show`` (the screen).
"""
