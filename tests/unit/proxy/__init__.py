"""Unit tests of the metadata proxy: store rules, tokens, settings, and each endpoint with the aiohttp test client."""
