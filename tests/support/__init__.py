"""Test helpers shared by every tier: free ports, managed processes, moto's STS server."""
