"""podiam's kopf operator: pod IAM roles in, STS credentials pushed to every node's proxy."""
