"""What only the tests use on top of localcluster/: the pytest plugins (the control plane and moto fixtures),
the node metadata server, the TCP gate and Prometheus of a few integration, fault and chart tests."""
