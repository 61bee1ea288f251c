"""Node tests: network namespaces play pods, the proxy's iptables rule routes their 169.254.169.254 traffic."""
