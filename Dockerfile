# Worker image for cluster mode: `stepstream worker processor|sink` against a real
# Kafka and Redis (see docker-compose.yml). The embedded `stepstream up` stack is not
# what this image is for.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The source is only needed to build the wheel; removing it in the same layer keeps
# the image to the installed package. No torch extra: workers never import torch.
COPY . /tmp/stepstream-src
RUN pip install /tmp/stepstream-src && rm -rf /tmp/stepstream-src

# A numeric uid lets orchestrators that enforce runAsNonRoot verify it without /etc/passwd.
RUN useradd --create-home --home-dir /home/stepstream --uid 10001 --user-group stepstream
USER 10001
# faust creates its data folder relative to the working directory, so it must be writable.
WORKDIR /home/stepstream

ENTRYPOINT ["stepstream"]
CMD ["--help"]
