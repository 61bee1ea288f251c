"""Integration tests of the metadata proxy: the real process, unmodified botocore and AWS CLI, moto STS."""
