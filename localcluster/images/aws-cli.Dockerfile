# The guide's test pod (demo/aws-iam-tester.yaml, image garland/aws-cli-docker):
# the AWS CLI, and /bin/sleep for its `command`. Built FROM python-base by
# tests/images (no registry here); the build context is empty.
ARG PYTHON_IMAGE
FROM ${PYTHON_IMAGE}
# The version the repository's dev extra resolves to (awscli pins its botocore).
ARG AWSCLI_VERSION=1.46.3
# A venv without pip of its own, filled by the system pip (as scripts/install-image-venv.sh does).
RUN python -m venv --without-pip /opt/aws-cli \
 && python -m pip --python /opt/aws-cli/bin/python install --no-input --no-cache-dir \
        --disable-pip-version-check --no-warn-script-location "awscli==${AWSCLI_VERSION}" \
 && /opt/aws-cli/bin/aws --version
ENV PATH=/opt/aws-cli/bin:$PATH
CMD ["aws", "--version"]
