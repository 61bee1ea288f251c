"""Container images for the real nodes (tests/e2e), built here from Debian packages
and the repository's Dockerfiles, without a registry or a Docker daemon.
``images.ensure_built()`` builds what is missing (cached outside the repository),
``images.import_into()`` loads them into a containerd. CLI: ``python -m localcluster.images build | list``.
"""
